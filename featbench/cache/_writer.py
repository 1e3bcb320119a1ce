"""Writing a whole cache at once: tests, fixtures, imports, users converting their own features.

(`featbench extract` writes incrementally and resumably instead: see `_resume`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from featbench.cache._schema import STRING_DTYPE, VIEW_SET_NAMES
from featbench.cache._validate import scan_nonfinite
from featbench.diskspace import check_free_space, disk_full_as_error
from featbench.errors import FeatbenchError


def chunks_for(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """HDF5 chunks of a feature array: up to 1024 rows of [N, D]; one view of up to 1024 rows of [V, K, D]."""
    if not shape or 0 in shape:
        return None
    if len(shape) == 2:
        return (min(shape[0], 1024), shape[1])
    if len(shape) == 3:
        return (1, min(shape[1], 1024), shape[2])
    return None


def write_array(group, name: str, data, dtype) -> None:
    """A feature array stored as `dtype`, chunked by rows."""
    data = np.asarray(data)
    group.create_dataset(name, data=data.astype(dtype), chunks=chunks_for(data.shape))


def write_strings(group, name: str, values: Sequence[str]):
    """A UTF-8 string dataset (returned, for its attributes)."""
    return group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STRING_DTYPE)


def write_text(f, text_features, templates: Sequence[str] | None, dtype) -> h5py.Group:
    """/text/features with its templates attribute; returns the /text group."""
    g = f.require_group("text")
    write_array(g, "features", text_features, dtype)
    g["features"].attrs["templates"] = json.dumps(list(templates or []))
    return g


def write_split_index(sg, name: str, split: Mapping) -> h5py.Group:
    """/splits/<name> with its paths, labels and (when given) rows; returns the split group."""
    g = sg.create_group(name)
    write_strings(g, "paths", split["paths"])
    g.create_dataset("labels", data=np.asarray(split["labels"], dtype=np.int64))
    if split.get("rows") is not None:
        g.create_dataset("rows", data=np.asarray(split["rows"], dtype=np.int64))
    return g


def write_cache(
    path: str | os.PathLike,
    *,
    attrs: Mapping,
    classnames: Sequence[str],
    splits: Mapping[str, Mapping],
    text_features: np.ndarray | None = None,
    templates: Sequence[str] | None = None,
    views: np.ndarray | None = None,
    view_rows: Sequence[int] | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    dtype: str = "float16",
    view_scale: Sequence[float] | None = None,
    more_views: Mapping[str, tuple[np.ndarray, Sequence[float]]] | None = None,
) -> Path:
    """Write a complete schema-v1 cache atomically (temporary file, then rename); a disk without room for the
    arrays is refused before anything is written, and a write that fails half-way removes the temporary file.

    splits maps split name -> {"paths", "labels", "features"[, "rows"][, "features_pre"]}.
    extra maps absolute dataset names (e.g. "/model/image_projection") to arrays stored as float32.
    view_scale is the crop scale of ``views`` (attr ``scale``); more_views maps further view-set names
    ("views_2", ...) to (array [V, K, D] over the same view_rows, scale).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    arrays = [text_features, views, *(s.get(k) for s in splits.values() for k in ("features", "features_pre")),
              *(a for a, _ in (more_views or {}).values())]
    size = expected_bytes(arrays, dtype) + expected_bytes((extra or {}).values(), "float32")
    then = "nothing was written; rerun once there is room"
    check_free_space(path.parent, size, path.name, then)
    with disk_full_as_error(path.parent, path.name, size, then):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if tmp.exists():
                tmp.unlink()
            with h5py.File(tmp, "w") as f:
                _write_contents(f, attrs, classnames, splits, text_features, templates, views, view_rows, extra,
                                dtype, view_scale, more_views)
            os.replace(tmp, path)
        except BaseException:
            if tmp.is_file():  # a failed write leaves no half-written file behind
                tmp.unlink()
            raise
    return path


def expected_bytes(arrays, dtype) -> int:
    """Bytes the feature arrays take on disk as ``dtype`` (None entries skipped): what a write needs at least."""
    item = np.dtype(dtype).itemsize
    return sum(int(np.size(a)) * item for a in arrays if a is not None)


def _write_contents(f, attrs, classnames, splits, text_features, templates, views, view_rows, extra, dtype,
                    view_scale, more_views) -> None:
    """Everything of a cache into the open file ``f`` (see `write_cache`)."""
    for k, v in attrs.items():
        f.attrs[k] = v
    write_strings(f, "classnames", classnames)
    if text_features is not None:
        write_text(f, text_features, templates, dtype)
    sg = f.create_group("splits")
    for name, s in splits.items():
        _write_split(sg, name, s, dtype)
    if views is not None:
        _write_views(sg["train"], views, view_rows, view_scale, more_views or {}, dtype)
    for name, arr in (extra or {}).items():
        f.create_dataset(name, data=np.asarray(arr, dtype=np.float32))
    f.attrs["nonfinite"] = json.dumps(scan_nonfinite(f))


def _write_split(sg, name: str, split: Mapping, dtype) -> None:
    """One split's index and its features (and pre-projection features when given)."""
    g = sg.create_group(name)
    write_strings(g, "paths", split["paths"])
    g.create_dataset("labels", data=np.asarray(split["labels"], dtype=np.int64))
    write_array(g, "features", split["features"], dtype)
    if split.get("rows") is not None:
        g.create_dataset("rows", data=np.asarray(split["rows"], dtype=np.int64))
    if split.get("features_pre") is not None:
        write_array(g, "features_pre", split["features_pre"], dtype)


def _write_views(g, views, view_rows, view_scale, more_views: Mapping, dtype) -> None:
    """The train split's view sets over one shared view_rows, each with its crop scale."""
    write_array(g, "views", views, dtype)
    g.create_dataset("view_rows", data=np.asarray(view_rows, dtype=np.int64))
    if view_scale is not None:
        g["views"].attrs["scale"] = np.asarray(view_scale, dtype=np.float64)
    for name, (arr, scale) in more_views.items():
        if name not in VIEW_SET_NAMES[1:]:
            raise FeatbenchError(f"view set name {name!r}: use one of {', '.join(VIEW_SET_NAMES[1:])}")
        write_array(g, name, arr, dtype)
        g[name].attrs["scale"] = np.asarray(scale, dtype=np.float64)
