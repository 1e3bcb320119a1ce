"""What a cell reads from a cache, memoised per process: open caches, big arrays, labelled splits.

A worker runs many cells on the same cache (seeds, shots, search points), so caches stay open and the large
arrays (the full test features) are read once per process, keyed by the file's identity (path, inode, mtime,
size) so a rewritten file is never served stale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from featbench.errors import FeatbenchError
from featbench.lru import LRU

_OPEN = LRU(16, on_evict=lambda cache: cache.close())
_ARRAYS = LRU(6)


def _file_id(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_ino, st.st_mtime_ns, st.st_size)


def open_cached(path: str):
    """A `Cache` for path, reused across cells in this process while the file is unchanged."""
    from featbench.cache import Cache  # lazy: h5py loads only when a cell opens a cache

    if not os.path.exists(path):
        raise FeatbenchError(f"cache file {path} does not exist; run `featbench extract` first or check the path")
    return _OPEN.get_or_make(_file_id(path), lambda: Cache(path))


def memo(cache, what: tuple, load):
    """``load()`` once per (file, what) in this process (LRU): big arrays are read once per worker."""
    return _ARRAYS.get_or_make((_file_id(str(cache.path)),) + what, load)


def close_cached() -> None:
    """Close every cache this process holds open and drop memoised arrays."""
    while _OPEN:
        _, c = _OPEN.popitem()
        c.close()
    _ARRAYS.clear()


def has_val(cache) -> bool:
    """Whether the cache has a non-empty val split (ImageNet in CoOp has none)."""
    return cache.has_split("val") and len(cache.labels("val")) > 0


@dataclass
class Split:
    """Features and labels of one split's rows, with the name rows record (val, holdout, test)."""

    X: np.ndarray
    y: np.ndarray
    name: str


def labelled(cache, split: str, kind: str, rows: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(features of ``kind``, labels) of ``rows`` of a split; rows None = every row with stored features."""
    labels = cache.labels(split)
    if rows is None:
        stored = cache.feature_rows(split)
        X = memo(cache, (split, kind), lambda: cache.features(split, None, kind=kind))
        return X, labels[stored]
    rows = np.asarray(rows, dtype=np.int64)
    return cache.features(split, rows, kind=kind), labels[rows]


def extra_arrays(cache) -> dict:
    """Optional model tensors for heads that work before the projection (ProLIP, text-projection)."""
    out = {}
    for name in ("/model/image_projection", "/model/image_projection_bias", "/model/text_projection", "/text/features_pre"):
        if cache.has_dataset(name):
            out[name.strip("/").split("/", 1)[1] if name.startswith("/model/") else "text_features_pre"] = \
                memo(cache, ("extra", name), lambda n=name: cache.array(n))
    return out
