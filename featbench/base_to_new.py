"""Base-to-new generalisation (CoCoOp, Zhou et al. CVPR 2022): train on half the classes, test on both halves.

The split reproduces KaiyangZhou/CoOp ``datasets/oxford_pets.py::subsample_classes``:

1. the few-shot subset is sampled over **all** classes first, exactly as without the protocol;
2. the label set of that few-shot train subset, sorted, is cut at m = ceil(n / 2): "base" = labels[:m],
   "new" = labels[m:]; each half is relabelled 0..len(half)-1 in sorted order;
3. train, selection and test splits are filtered to the half in use.

A head is trained on base (few-shot train and selection split restricted to base, text features of the base
classes only). It is evaluated on the base test images over the base classes, and on the new test images over
the new classes. A head that can score classes it never saw (``Head.scores_unseen_classes``) is handed the new
classes' text features through ``Head.for_classes``; any other head falls back to zero-shot CLIP on the new
classes, and its "new" row says so (``"fallback": "zeroshot"`` and a note) — never silently.

This module holds the class arithmetic and the two rows of a cell (``featbench.protocol.run_cell`` calls it
when a cell has ``base_to_new=True``), and the Base / New / H table ``featbench table`` prints for such rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from featbench.cell_inputs import labelled
from featbench.errors import FeatbenchError
from featbench.heads.zeroshot import ZeroShot
from featbench.metrics import accuracy, mean_per_class_recall, predict
from featbench.results import ROW_FIELDS, now_iso

CLASS_SUBSETS = ("all", "base", "new")
FALLBACK = "zeroshot"


def fallback_note(head: str) -> str:
    return (f"new classes: head '{head}' cannot score classes it was not trained on; "
            f"its new-class accuracy is zero-shot CLIP's (fallback)")


@dataclass(frozen=True)
class Halves:
    """The two class subsets, as sorted original labels."""

    base: np.ndarray
    new: np.ndarray

    def classes(self, which: str) -> np.ndarray:
        if which not in ("base", "new"):
            raise ValueError(f"which must be 'base' or 'new', not {which!r}")
        return self.base if which == "base" else self.new


def class_halves(fewshot_train_labels: Sequence[int]) -> Halves:
    """Sorted label set of the few-shot train subset, split at ceil(n / 2) (CoCoOp's subsample_classes)."""
    labels = np.unique(np.asarray(fewshot_train_labels, dtype=np.int64))  # sorted
    if len(labels) < 2:
        raise FeatbenchError(f"--base-to-new needs at least 2 classes in the few-shot subset (got {len(labels)})")
    m = math.ceil(len(labels) / 2)
    return Halves(base=labels[:m], new=labels[m:])


def restrict(X: np.ndarray, y: np.ndarray, classes: np.ndarray, views: np.ndarray | None = None):
    """Keep the rows whose label is in ``classes`` and relabel them to their index in ``classes``.

    Returns (X, y, views) with views [V, N, D] filtered along N like X (None stays None).
    """
    y = np.asarray(y)
    mask = np.isin(y, classes)
    y_new = np.searchsorted(classes, y[mask]).astype(np.int64)
    return X[mask], y_new, (None if views is None else views[:, mask])


def restrict_context(context: dict[str, Any], classes: np.ndarray) -> dict[str, Any]:
    """The fit context of a class subset: text [T, C, D], classnames and per-class extras cut to ``classes``."""
    out = dict(context)
    text = context.get("text")
    if text is not None:
        t = np.asarray(text)
        out["text"] = t[:, classes] if t.ndim == 3 else t[classes]
    names = context.get("classnames")
    if names is not None:
        out["classnames"] = [names[int(c)] for c in classes]
    extra = dict(context.get("extra") or {})
    pre = extra.get("text_features_pre")
    if pre is not None:
        pre = np.asarray(pre)
        extra["text_features_pre"] = pre[:, classes] if pre.ndim == 3 else pre[classes]
    out["extra"] = extra
    return out


def head_for_new_classes(head, head_cls, context_new: dict[str, Any], device: str = "cpu"):
    """(scorer, fallback) for the new classes: the head itself via ``for_classes`` when it can score unseen
    classes, else zero-shot CLIP on the new classes' text with fallback = "zeroshot"."""
    if head_cls.scores_unseen_classes:
        return head.for_classes(context_new["text"], classnames=context_new.get("classnames"),
                                extra=context_new.get("extra")), None
    zs = ZeroShot(device=device).fit(None, None, text=context_new["text"], logit_scale=context_new["logit_scale"])
    return zs, FALLBACK


def cell_rows(cell, cls, src, kind: str, head, halves: Halves, full_context: dict, base_row: dict) -> list[dict]:
    """The "base" and "new" rows of a base-to-new cell: each subset's test images over its own classes."""
    Xt_all, yt_all = labelled(src, "test", kind, None)
    rows = []
    for which in ("base", "new"):
        classes = halves.classes(which)
        Xt, yt, _ = restrict(Xt_all, yt_all, classes)
        if Xt.shape[0] == 0:
            raise FeatbenchError(f"{src.path}: no test images of the {which} classes to evaluate on")
        scorer, fallback, notes = head, None, list(base_row["notes"])
        if which == "new":
            scorer, fallback = head_for_new_classes(head, cls, restrict_context(full_context, classes), cell.device)
            if fallback:
                notes.append(fallback_note(cell.head))
        pred = predict(scorer, Xt)
        row = {
            "dataset": src.dataset,
            **base_row,
            "classes": which,
            "cache": str(src.path),
            "acc": accuracy(pred, yt),
            "mean_per_class_recall": mean_per_class_recall(pred, yt),
            "n_test": int(yt.shape[0]),
            "n_classes": int(len(classes)),
            "fallback": fallback,
            "notes": notes,
            "timestamp": now_iso(),
        }
        rows.append({**{k: row[k] for k in ROW_FIELDS if k in row}, **row})
    return rows


__all__ = ["CLASS_SUBSETS", "FALLBACK", "Halves", "class_halves", "restrict", "restrict_context",
           "head_for_new_classes", "fallback_note", "cell_rows"]
