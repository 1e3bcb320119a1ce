"""Few-shot subsets per (shots, seed), reproducing the Dassl/CoOp sampling exactly.

What Dassl does (``DatasetBase.generate_fewshot_dataset`` with ``repeat=False``), and therefore what we do:

1. The run seed S seeds Python's global ``random`` once (``set_random_seed(S)``) before the dataset is
   built; nothing else draws from it before the sampling. ``random.Random(S)`` yields the identical stream,
   so we use a private generator and leave the global state alone.
2. Items are grouped by label in a ``defaultdict(list)`` while walking the split file in order, so classes
   are visited in order of *first appearance* in the split (not sorted by label) and each class keeps its
   items in file order.
3. For each class, ``random.sample(items, K)`` when the class has at least K items, otherwise all items
   are kept (no repetition). The picks are concatenated in that order.
4. The train split is sampled with K shots first, then the val split with min(K, 4) shots, drawing from the
   *same* generator (CoOp datasets call the function twice in that order). ImageNet has no val split in
   CoOp, so only train is sampled.

Because the generator state after class c depends on how many draws every earlier class consumed, the
8-shot subset is *not* a prefix of the 16-shot subset (beyond the first class). Anything that caches
per-subset data (augmented views) must therefore take the union over every shot count it will fit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from featbench.errors import FeatbenchError

VAL_SHOTS_CAP = 4
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)


def val_shots(shots: int) -> int:
    """CoOp samples min(K, 4) validation images per class."""
    return min(int(shots), VAL_SHOTS_CAP)


def sample_per_class(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Row indices of a K-shot subset of a split, drawn exactly as Dassl draws them (see module doc)."""
    if shots < 1:
        return list(range(len(labels)))
    by_label: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(row)
    picked: list[int] = []
    for rows in by_label.values():
        if len(rows) >= shots:
            picked.extend(rng.sample(rows, shots))
        else:
            picked.extend(rows)
    return picked


def shortfall_notes(train_labels: Sequence[int], shots: int, classnames: Sequence[str] | None = None) -> list[str]:
    """Row notes for a K-shot request the train split cannot honour (what the result row must say).

    - a class with fewer than K train images: Dassl's sampler silently takes all of them (fewer shots);
    - a class with no train image at all: the head never sees it (zero-shot heads still score it through
      the text; image-only heads cannot predict it). A note, not an error: the number is still the
      honest result for that split, and the test set is unchanged.
    """
    n_classes = len(classnames) if classnames is not None else 0
    labels = np.asarray(train_labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes) if labels.size else np.zeros(n_classes, dtype=np.int64)

    def name(c: int) -> str:
        return repr(str(classnames[c])) if classnames is not None and c < len(classnames) else f"class {c}"

    notes = []
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        notes.append(f"{empty.size} class(es) have no train images (e.g. {name(int(empty[0]))}): "
                     "the head never saw them")
    short = np.flatnonzero((counts > 0) & (counts < int(shots)))
    if short.size:
        eg = ", ".join(f"{name(int(c))}: {int(counts[c])}" for c in short[:3])
        notes.append(f"{short.size} class(es) have fewer than {int(shots)} train images ({eg}"
                     f"{', ...' if short.size > 3 else ''}): all their images were used")
    return notes


def check_seed(seed: int, flag: str = "--seeds") -> int:
    """Seeds must be >= 0: random.Random(-s) draws exactly what random.Random(s) draws."""
    if int(seed) < 0:
        raise FeatbenchError(f"{flag} {int(seed)}: negative seeds draw the same few-shot subset as {-int(seed)} "
                             "(Python's random ignores the sign); use seeds >= 0")
    return int(seed)


@dataclass(frozen=True)
class FewShotRows:
    """Row indices (into the cache's split index) of one (shots, seed) subset."""

    shots: int
    seed: int
    train: list[int]
    val: list[int] | None  # None where the dataset has no val split (ImageNet)


def fewshot_rows(train_labels: Sequence[int], val_labels: Sequence[int] | None, shots: int, seed: int,
                 val_per_class: int | None = None) -> FewShotRows:
    """The K-shot train subset and min(K, 4)-shot val subset that CoOp picks for this seed.

    ``val_per_class`` draws another number of val images per class from the same generator: LP++ and ProLIP
    (``generate_fewshot_dataset_(K, split="val")`` right after the train draw) use K. The train rows are the same.
    """
    rng = random.Random(check_seed(seed))
    train = sample_per_class(list(train_labels), shots, rng)
    val = None
    if val_labels is not None and len(val_labels) > 0:
        per = val_shots(shots) if val_per_class is None else int(val_per_class)
        val = sample_per_class(list(val_labels), per, rng)
    return FewShotRows(shots=int(shots), seed=int(seed), train=train, val=val)


def holdout_rows(train_labels: Sequence[int], fewshot_train: Sequence[int], shots: int, seed: int,
                 per_class: int | None = None) -> list[int]:
    """featbench's selection split for a dataset with no val split (ImageNet in CoOp).

    min(K, 4) images per class drawn, with the same per-class sampler, from the train rows that are *not*
    in the K-shot subset, using a generator of its own (``random.Random("featbench-val-holdout:<seed>")``)
    so the CoOp train picks are untouched. Deterministic, disjoint from the training images, never test.
    ``per_class`` overrides min(K, 4) (LP++'s ImageNet script holds out K more train images per class).
    """
    taken = set(int(r) for r in fewshot_train)
    candidates = [r for r in range(len(train_labels)) if r not in taken]
    cand_labels = [int(train_labels[r]) for r in candidates]
    rng = random.Random(f"featbench-val-holdout:{int(seed)}")
    picked = sample_per_class(cand_labels, val_shots(shots) if per_class is None else int(per_class), rng)
    return [candidates[i] for i in picked]


def union_rows(
    train_labels: Sequence[int],
    val_labels: Sequence[int] | None,
    shots: Iterable[int],
    seeds: Iterable[int],
    *,
    with_holdout: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unions of the train and val rows over every (shots, seed) pair — what extraction must cover.

    with_holdout adds, for a dataset without a val split, the held-out train rows ``holdout_rows`` picks as
    the selection split, min(K, 4) and K per class (they need plain features, not augmented views).
    """
    train: set[int] = set()
    val: set[int] = set()
    no_val = val_labels is None or len(val_labels) == 0
    for k in shots:
        for s in seeds:
            sub = fewshot_rows(train_labels, val_labels, k, s)
            train.update(sub.train)
            if sub.val is not None:
                val.update(sub.val)
            if with_holdout and no_val:
                train.update(holdout_rows(train_labels, sub.train, k, s))
                train.update(holdout_rows(train_labels, sub.train, k, s, per_class=k))  # LP++/ProLIP: K per class
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)
