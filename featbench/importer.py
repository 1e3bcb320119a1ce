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

from featbench.cache import SPLITS, base_attrs, compute_fingerprint, write_cache
from featbench.errors import FeatbenchError


def import_npz(npz: str | Path, out: str | Path, *, dataset: str, model: str, pretrained: str,
               logit_scale: float = 100.0, preprocess: str = "imported", dtype: str = "float16",
               overwrite: bool = False) -> Path:
    """Write a schema-v1 cache at `out` from the arrays in `npz`; returns the cache path."""
    npz, out = Path(npz), Path(out)
    if not npz.exists():
        raise FeatbenchError(f"feature file {npz} not found; pass an .npz with <split>_features and <split>_labels arrays")
    if out.exists() and not overwrite:
        raise FeatbenchError(f"{out} exists; pass --overwrite to replace it")
    try:
        data = np.load(npz, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as err:  # a corrupt or non-npz file
        raise FeatbenchError(f"{npz} is not a readable .npz file ({err})") from None

    splits = {}
    dim = None
    for split in SPLITS:
        if f"{split}_features" not in arrays:
            continue
        feats = np.asarray(arrays[f"{split}_features"], dtype=np.float32)
        if f"{split}_labels" not in arrays:
            raise FeatbenchError(f"{npz}: has {split}_features but no {split}_labels")
        labels = np.asarray(arrays[f"{split}_labels"], dtype=np.int64)
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
    classnames = [str(c) for c in arrays["classnames"]] if "classnames" in arrays else [f"class_{i}" for i in range(n_classes)]
    if len(classnames) < n_classes:
        raise FeatbenchError(f"{npz}: labels go up to {n_classes - 1} but classnames has {len(classnames)} entries")

    text = arrays.get("text_raw")
    templates = [str(t) for t in arrays["templates"]] if "templates" in arrays else None
    if text is not None and (text.ndim != 3 or text.shape[1:] != (len(classnames), dim)):
        raise FeatbenchError(f"{npz}: text_raw must be [T, {len(classnames)}, {dim}], got {list(text.shape)}")

    views = arrays.get("train_views")
    view_rows = None
    if views is not None:
        if "train" not in splits or views.ndim != 3 or views.shape[1:] != splits["train"]["features"].shape:
            raise FeatbenchError(f"{npz}: train_views must be [V, N_train, D] aligned with train_features")
        view_rows = np.arange(views.shape[1])

    prep = {"source": "imported", "preprocess": preprocess}
    attrs = base_attrs(model=model, pretrained=pretrained, dataset=dataset, embed_dim=dim, logit_scale=logit_scale,
                       fingerprint=compute_fingerprint(model, pretrained, prep), preprocess=prep)
    return write_cache(out, attrs=attrs, classnames=classnames, splits=splits, text_features=text,
                       templates=templates, views=views, view_rows=view_rows, dtype=dtype)
