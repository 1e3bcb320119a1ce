"""Turn features computed elsewhere (a .npz of arrays) into a schema-v1 cache, so every head can use them.

Researchers often already hold CLIP features from their own pipelines. The .npz holds, per split in
train/val/test: ``<split>_features`` [N, D] and ``<split>_labels`` [N]; optionally ``<split>_paths`` [N]
(the image identities; ``<split>/<row>`` placeholders otherwise), ``train_views`` [V, N_train, D],
``classnames`` [C], ``text_raw`` [T, C, D] raw text-encoder outputs and ``templates`` [T]. The fingerprint
is derived from the model/pretrained labels the user gives (plus the `preprocess` description), so caches
imported with the same labels combine (domain generalisation) while anything else is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featbench.cache import SPLITS, base_attrs, compute_fingerprint, require_fits_dtype, write_cache
from featbench.errors import FeatbenchError
from featbench.npyfiles import check_npy_size
from featbench.prompts import check_classname


def _numeric(npz: Path, name: str, arr, dtype: str) -> np.ndarray:
    """A float32 copy of a feature array that fits the on-disk ``dtype``, or one line naming the array that is
    not numbers, not finite or out of that dtype's range."""
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise FeatbenchError(f"{npz}: {name} holds {arr.dtype} values, expected numbers (float features)")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused just below
        out = arr.astype(np.float32)
    if out.size and not np.isfinite(out).all():
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        raise FeatbenchError(f"{npz}: {name} holds {bad} NaN/Inf value(s) (or values too large for float32); "
                             "drop or fix those rows before importing")
    require_fits_dtype(out, dtype, f"{npz}: {name}", "import with --dtype float32 (or rescale the features)")
    return out


def _labels(npz: Path, name: str, arr) -> np.ndarray:
    """int64 labels 0..C-1, or one line saying what is wrong with them."""
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise FeatbenchError(f"{npz}: {name} must hold whole-number class indices 0..C-1")
    elif not np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        raise FeatbenchError(f"{npz}: {name} holds {arr.dtype} values, expected integer class indices 0..C-1")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise FeatbenchError(f"{npz}: {name} has negative labels (min {int(labels.min())}); labels are class indices 0..C-1")
    return labels


def _read_npz(npz: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz, each member's header checked against its size before numpy allocates it."""
    try:
        with np.load(npz, allow_pickle=False) as data:
            for info in data.zip.infolist():
                with data.zip.open(info) as fh:
                    check_npy_size(fh, info.file_size, f"{npz} member {info.filename}")
            return {k: data[k] for k in data.files}
    except FeatbenchError:
        raise
    except Exception as err:  # a corrupt or non-npz file
        raise FeatbenchError(f"{npz} is not a readable .npz file ({str(err)[:200]})") from None


def _classnames(npz: Path, arrays: dict, n_classes: int) -> list[str]:
    if "classnames" not in arrays:
        return [f"class_{i}" for i in range(n_classes)]
    names = [str(c) for c in np.asarray(arrays["classnames"]).reshape(-1)]
    for i, name in enumerate(names):
        check_classname(name, f"{npz}: classnames[{i}]")
    return names


def import_npz(npz: str | Path, out: str | Path, *, dataset: str, model: str, pretrained: str,
               logit_scale: float = 100.0, preprocess: str = "imported", dtype: str = "float16",
               overwrite: bool = False) -> Path:
    """Write a schema-v1 cache at `out` from the arrays in `npz`; returns the cache path."""
    npz, out = Path(npz), Path(out)
    if not npz.exists():
        raise FeatbenchError(f"feature file {npz} not found; pass an .npz with <split>_features and <split>_labels arrays")
    if not npz.is_file():
        raise FeatbenchError(f"feature file {npz} is not a regular file; pass an .npz file")
    if out.exists() and not overwrite:
        raise FeatbenchError(f"{out} exists; pass --overwrite to replace it")
    arrays = _read_npz(npz)

    splits = {}
    dim = None
    for split in SPLITS:
        if f"{split}_features" not in arrays:
            continue
        feats = _numeric(npz, f"{split}_features", arrays[f"{split}_features"], dtype)
        if f"{split}_labels" not in arrays:
            raise FeatbenchError(f"{npz}: has {split}_features but no {split}_labels")
        labels = _labels(npz, f"{split}_labels", arrays[f"{split}_labels"])
        if feats.ndim != 2 or labels.shape != (feats.shape[0],):
            raise FeatbenchError(f"{npz}: {split}_features must be [N, D] with N = len({split}_labels)")
        dim = dim or feats.shape[1]
        if feats.shape[1] != dim:
            raise FeatbenchError(f"{npz}: {split}_features has width {feats.shape[1]}, other splits {dim}")
        paths = arrays.get(f"{split}_paths")
        paths = [str(p) for p in paths] if paths is not None else [f"{split}/{i:07d}" for i in range(len(labels))]
        if len(paths) != len(labels):
            raise FeatbenchError(f"{npz}: {split}_paths has {len(paths)} entries but {split}_labels has {len(labels)}")
        splits[split] = {"paths": paths, "labels": labels, "features": feats}
    if not splits:
        raise FeatbenchError(f"{npz}: no <split>_features arrays (expected train_features, val_features, test_features)")

    n_classes = max((int(s["labels"].max()) for s in splits.values() if len(s["labels"])), default=-1) + 1
    classnames = _classnames(npz, arrays, n_classes)
    if len(classnames) < n_classes:
        raise FeatbenchError(f"{npz}: labels go up to {n_classes - 1} but classnames has {len(classnames)} entries")

    text = arrays.get("text_raw")
    if text is not None:
        text = _numeric(npz, "text_raw", text, dtype)
    templates = [str(t) for t in arrays["templates"]] if "templates" in arrays else None
    if text is not None and (text.ndim != 3 or text.shape[1:] != (len(classnames), dim)):
        raise FeatbenchError(f"{npz}: text_raw must be [T, {len(classnames)}, {dim}], got {list(text.shape)}")

    views = arrays.get("train_views")
    if views is not None:
        views = _numeric(npz, "train_views", views, dtype)
    view_rows = None
    if views is not None:
        if "train" not in splits or views.ndim != 3 or views.shape[1:] != splits["train"]["features"].shape:
            raise FeatbenchError(f"{npz}: train_views must be [V, N_train, D] aligned with train_features")
        view_rows = np.arange(views.shape[1])

    try:
        logit_scale = float(logit_scale)
    except (TypeError, ValueError):
        raise FeatbenchError(f"--logit-scale {logit_scale!r}: give a positive number such as 100") from None
    if not np.isfinite(logit_scale) or logit_scale <= 0:
        raise FeatbenchError(f"--logit-scale {logit_scale}: give a finite positive number such as 100 (CLIP's exp(logit_scale))")
    prep = {"source": "imported", "preprocess": preprocess}
    attrs = base_attrs(model=model, pretrained=pretrained, dataset=dataset, embed_dim=dim, logit_scale=logit_scale,
                       fingerprint=compute_fingerprint(model, pretrained, prep), preprocess=prep)
    return write_cache(out, attrs=attrs, classnames=classnames, splits=splits, text_features=text,
                       templates=templates, views=views, view_rows=view_rows, dtype=dtype)
