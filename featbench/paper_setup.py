"""What a grid cell hands a head besides its hyperparameters: the selection split and the paper's inputs.

Heads declare what their reference code used (``featbench.heads.paper``); this module turns those
declarations and a cache into arrays and row notes for ``featbench.protocol.run_cell``:

- ``selection_kind`` / ``selection_rows`` — which split a cell selects on: test under ``oracle``, CoOp's
  min(K, 4)-per-class few-shot val under ``val``, the head's ``paper_selection`` under ``paper`` (the full val
  split, K val images per class, or CoOp's). Without a val split (ImageNet): held-out train rows.
- ``pick_templates`` — the cache's per-template text features the paper averages, by exact string.
- ``pick_view_set`` — the cached view set at the paper's RandomResizedCrop scale.
- ``paper_inputs`` — all of the above but the split, applied to one cell, with row notes.
"""

from __future__ import annotations

from typing import Sequence

from featbench.errors import FeatbenchError
from featbench.fewshot import fewshot_rows, holdout_rows
from featbench.heads.paper import FEWSHOT_VAL, FULL_VAL, KSHOT_VAL, SELECTIONS

HOLDOUT_NOTE = "selection split: held-out train rows (dataset has no val split)"
FULL_VAL_NOTE = "selection split: the full val split, as the paper's code"
KSHOT_VAL_NOTE = "selection split: K val images per class, as the paper's code"


def selection_kind(head_cls, protocol: str) -> str:
    """Where a cell selects: "test" (oracle), the CoOp few-shot val (val), the head's paper split (paper)."""
    if protocol == "oracle":
        return "test"
    if protocol == "paper":
        how = head_cls.paper_selection or FEWSHOT_VAL
        if how not in SELECTIONS:
            raise FeatbenchError(f"head {head_cls.name or head_cls.__name__}: paper_selection {how!r} is not one of {SELECTIONS}")
        return how
    return FEWSHOT_VAL


def selection_rows(how: str, train_labels, val_labels, shots: int, seed: int, sub) -> tuple[str, list[int] | None, str | None]:
    """(split, rows or None for every stored row, note) of a selection split.

    Datasets without a val split (ImageNet) hold out train rows instead: K per class for ``kshot_val`` (LP++'s
    ImageNet script), min(K, 4) otherwise (also for ``full_val``: the references select on test there, which
    only ``oracle`` reproduces).
    """
    if how == "test":
        return "test", None, None
    if val_labels is not None and len(val_labels) > 0:
        if how == FULL_VAL:
            return "val", None, FULL_VAL_NOTE
        if how == KSHOT_VAL:
            return "val", fewshot_rows(train_labels, val_labels, int(shots), int(seed), val_per_class=int(shots)).val, KSHOT_VAL_NOTE
        return "val", list(sub.val), None
    per = int(shots) if how == KSHOT_VAL else None
    rows = holdout_rows(train_labels, sub.train, int(shots), int(seed), per_class=per)
    note = HOLDOUT_NOTE + (" (K per class, as LP++'s ImageNet script)" if per is not None else "")
    return "train", rows, note


def pick_templates(head_cls, dataset: str, templates: Sequence[str]) -> tuple[list[int] | None, str | None]:
    """Indices of the cache templates the head's paper uses on this dataset (None = all), and a row note."""
    want = (head_cls.paper_templates or {}).get(dataset)
    if not want or not templates:
        return None, None
    templates = list(templates)
    missing = [t for t in want if t not in templates]
    if missing:
        return None, (f"templates: the cache lacks {len(missing)} of the paper's {len(want)} (e.g. {missing[0]!r}); "
                      f"used the cache's {len(templates)}")
    idx = [templates.index(t) for t in want]
    if idx == list(range(len(templates))):
        return None, None
    dropped = [t for t in templates if t not in want]
    return idx, (f"templates: the paper's {len(idx)} of the cache's {len(templates)}"
                 + (f" (without {', '.join(repr(t) for t in dropped[:3])})" if dropped else ""))


def pick_view_set(cache, want) -> tuple[str | None, tuple | None, str | None]:
    """(view-set name, its crop scale, note) of the cache's views closest to the paper's crop scale ``want``."""
    sets = cache.view_sets()
    if not sets:
        return None, None, None
    if want is not None:
        for name, scale in sets.items():
            if scale is not None and all(abs(a - b) < 1e-6 for a, b in zip(scale, want)):
                return name, scale, None
    name = "views" if "views" in sets else next(iter(sets))
    scale = sets[name]
    note = None
    if want is not None:
        note = (f"views: the cache has none at the paper's crop scale {list(want)}; used "
                f"{list(scale) if scale else 'views of unrecorded scale'} (extract --view-scales to add them)")
    return name, scale, note


def classname_note(head_cls, cache_style: str | None) -> str | None:
    """A row note when the cache's class-name style is not the one the head's reference code uses."""
    want = head_cls.paper_classname_style
    if not want or not cache_style or want == cache_style:
        return None
    return (f"class names: cache style {cache_style!r}, the paper's code uses {want!r} "
            f"({'underscores kept' if want == 'raw' else 'underscores as spaces'}); "
            f"extract with --classname-style {want} to match")


def paper_inputs(cls, cache, dataset: str, text, extra: dict, train_rows, kind: str):
    """(text, extra, views, view scale, notes) for a head: its paper's templates and view set, class-name note."""
    notes: list[str] = []
    tidx, tnote = pick_templates(cls, dataset, cache.templates)
    if tidx is not None and text is not None:
        text = text[tidx]
        pre = extra.get("text_features_pre")
        if pre is not None and pre.shape[0] == len(cache.templates):
            extra = {**extra, "text_features_pre": pre[tidx]}
    if tnote:
        notes.append(tnote)
    cnote = classname_note(cls, cache.preprocess.get("classname_style"))
    if cnote:
        notes.append(cnote)
    views = view_scale = None
    if cls.uses_views and cache.has_views and cache.covers_views(train_rows):
        suffix = kind[len("features"):]
        vname, scale, vnote = pick_view_set(cache, cls.paper_view_scale)
        if vname is not None and cache.has_dataset(f"/splits/train/{vname}{suffix}"):
            views, view_scale = cache.views(train_rows, kind=vname + suffix), scale
            if vnote:
                notes.append(vnote)
    return text, extra, views, view_scale, notes


__all__ = ["HOLDOUT_NOTE", "FULL_VAL_NOTE", "KSHOT_VAL_NOTE", "selection_kind", "selection_rows", "pick_templates",
           "pick_view_set", "classname_note", "paper_inputs"]
