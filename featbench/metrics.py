"""Scores of a fitted head on a labelled split: predictions in chunks, top-1, mean per-class recall, per-class
counts (enough to pool seeds or bootstrap later), and the optional saved predictions of a row."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from featbench.diskspace import disk_full_as_error
from featbench.results import canonical_json, row_key

EVAL_CHUNK = 8192


def predict(head, X: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """argmax of the head's logits (restricted to `columns`), in chunks so test sets of any size fit."""
    preds = []
    for start in range(0, X.shape[0], EVAL_CHUNK):
        logits = np.asarray(head.decision_function(X[start:start + EVAL_CHUNK]))
        if columns is not None:
            logits = logits[:, columns]
        preds.append(logits.argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(y)).mean() * 100.0)


def mean_per_class_recall(pred: np.ndarray, y: np.ndarray) -> float:
    y = np.asarray(y)
    pred = np.asarray(pred)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls) * 100.0)


def per_class_counts(pred: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Per class (label order): test images and how many were right — compact (two int lists) even for 1000
    classes, and enough to recompute per-class accuracy and pool seeds exactly (`featbench compare`)."""
    y = np.asarray(y, dtype=np.int64)
    hit = y[np.asarray(pred) == y]
    return {"correct": np.bincount(hit, minlength=n_classes).astype(int).tolist(),
            "total": np.bincount(y, minlength=n_classes).astype(int).tolist()}


def save_predictions(folder: str, row: dict, pred: np.ndarray, y: np.ndarray) -> str:
    """Write the row's test predictions and labels to ``folder/<row hash>.npz`` (atomically); return the name.

    A failed write (a full disk) removes its temporary file and raises `DiskFull` naming the folder."""
    name = hashlib.sha256(canonical_json(list(row_key(row))).encode()).hexdigest()[:20] + ".npz"
    target = Path(folder) / name
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    pred, y = np.asarray(pred, dtype=np.int32), np.asarray(y, dtype=np.int32)
    size = pred.nbytes + y.nbytes + 1024  # the two arrays plus the zip and .npy headers
    with disk_full_as_error(folder, f"{name} (--save-predictions)", size,
                            then="rerun the same command to resume"):
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, pred=pred, label=y)
            os.replace(tmp, target)
        except BaseException:
            if tmp.is_file():
                tmp.unlink()
            raise
    return name
