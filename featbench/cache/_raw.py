"""Verbatim access to cache files, for tools that copy datasets as they are (`featbench merge`).

`Cache` reads what the contract promises and `write_cache` writes it from arrays; a merge must also
carry datasets the contract only allows (``skipped``, ``views_pre``, /model/*) with their dtype,
chunking and attributes unchanged, and stream rows in blocks. These functions are that part of the
HDF5 work, so h5py stays inside this package; the merge rules stay in `featbench.merge`.
"""

from __future__ import annotations

import os

import h5py
import numpy as np


def open_file(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """A cache file opened as it is ("r": read, "w": create); use `Cache` to read by the contract."""
    return h5py.File(path, mode)


def dataset_items(f) -> dict[str, object]:
    """Every dataset below group `f`, by absolute name."""
    out: dict[str, object] = {}

    def visit(name, obj):
        if hasattr(obj, "dtype"):
            out["/" + name] = obj

    f.visititems(visit)
    return out


def group_names(f) -> list[str]:
    """Every group below `f`, by name relative to it (parents before children)."""
    out: list[str] = []

    def visit(name, obj):
        if not hasattr(obj, "dtype"):
            out.append(name)

    f.visititems(visit)
    return out


def copy_attrs(src, dst) -> None:
    """Set every attribute of HDF5 object `src` on `dst`."""
    for k, v in src.attrs.items():
        dst.attrs[k] = v


def copy_dataset(src_file, name: str, dst_file) -> None:
    """Copy dataset `name` (absolute) of one open file to the same name in another, whole (layout included)."""
    parent, leaf = name.rsplit("/", 1)
    dst_group = dst_file.require_group(parent) if parent not in ("", "/") else dst_file
    src_file.copy(src_file[name], dst_group, name=leaf)


def create_along(group, name: str, like, shape: tuple[int, ...], axis: int):
    """A new dataset of `like`'s dtype and attributes with `shape`, chunked by up to 1024 positions along `axis`."""
    dst = group.create_dataset(name, shape=tuple(shape), dtype=like.dtype, chunks=_chunks_along(tuple(shape), axis))
    copy_attrs(like, dst)
    return dst


def _chunks_along(shape: tuple[int, ...], axis: int) -> tuple[int, ...] | None:
    if not shape or 0 in shape:
        return None
    c = list(shape)
    if axis == 0:
        c[0] = min(shape[0], 1024)
    else:
        c = [1] * axis + [min(shape[axis], 1024)] + list(shape[axis + 1:])
    return tuple(c)


def _selection(pos: np.ndarray):
    """A slice when the positions are one contiguous run (fast in HDF5), else the list of positions."""
    contiguous = pos.size > 0 and int(pos[-1]) - int(pos[0]) + 1 == pos.size and bool(np.all(np.diff(pos) == 1))
    return slice(int(pos[0]), int(pos[-1]) + 1) if contiguous else pos.tolist()


def read_along(ds, pos: np.ndarray, axis: int) -> np.ndarray:
    """ds[..., pos, ...] along axis; pos sorted ascending, unique."""
    sl = _selection(pos)
    return ds[sl] if axis == 0 else ds[:, sl]


def write_along(ds, pos: np.ndarray, data: np.ndarray, axis: int) -> None:
    """ds[..., pos, ...] = data along axis; pos sorted ascending, unique."""
    if pos.size == 0:
        return
    sl = _selection(pos)
    if axis == 0:
        ds[sl] = data
    else:
        ds[:, sl] = data
