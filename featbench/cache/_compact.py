"""Dropping unreadable images when an extraction finishes: the compacted cache is a new file.

With bad rows, `CacheWriter.finalize` writes `<final>.tmp` (every group, dataset and attribute of the
partial but the progress, with the bad positions dropped), makes it durable and renames it into place;
only then is the partial deleted. The partial is only read, so a kill at any moment leaves either the
complete partial (a rerun finalises it again) or the final cache, and no space goes to dropped rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from featbench.cache._schema import PROGRESS_GROUP, SPLITS, read_strings
from featbench.cache._validate import scan_nonfinite
from featbench.cache._writer import chunks_for, write_strings
from featbench.errors import FeatbenchError


@dataclass(frozen=True)
class Drop:
    """What compaction does to one task: keep positions `keep` of its targets; rewrite `rows_name` as `rows`."""

    targets: tuple[str, ...]
    axis: int
    keep: np.ndarray
    rows_name: str
    rows: np.ndarray


def plan_drops(f, tasks: Mapping, bad: Mapping[str, np.ndarray],
               row_sets: Mapping[str, tuple[str, str]]) -> tuple[list[Drop], list[str]]:
    """(drops, skipped relative paths) for the bad positions of each task of an open partial.

    tasks: name -> BlockTask; bad: name -> bad positions; row_sets: name -> (row-index dataset, split).
    Skipped paths are canonical: split order, then row.
    """
    found: dict[str, tuple[int, int]] = {}
    drops: list[Drop] = []
    for name, t in tasks.items():
        if not bad[name].size:
            continue
        rows_name, split = row_sets[name]
        stored = _stored_rows(f, rows_name, split)
        paths = read_strings(f["splits"][split]["paths"])
        key = SPLITS.index(split) if split in SPLITS else len(SPLITS)
        for r in stored[bad[name]]:
            p = paths[int(r)]
            found[p] = min(found.get(p, (key, int(r))), (key, int(r)))
        keep = np.setdiff1d(np.arange(t.n, dtype=np.int64), bad[name])
        drops.append(Drop(tuple(t.targets), t.axis, keep, rows_name, stored[keep]))
    return drops, sorted(found, key=lambda p: found[p])


def _stored_rows(f, rows_name: str, split: str) -> np.ndarray:
    if rows_name in f:
        return np.asarray(f[rows_name][()], dtype=np.int64)
    return np.arange(f["splits"][split]["paths"].shape[0], dtype=np.int64)


def replace_with_compacted(src, final: Path, drops: Sequence[Drop], skipped: Sequence[str], created: str) -> None:
    """Write the compacted copy of the open partial `src` to `<final>.tmp`, fsync it, rename it to `final`.

    A failure removes the half-written copy (after a kill, the next run does) and leaves `src` untouched.
    """
    tmp = final.with_name(final.name + ".tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        dst = h5py.File(tmp, "w")
    except OSError as err:
        raise FeatbenchError(f"cannot write {tmp} ({err.strerror or err}); pass a writable --out or --cache-dir") from None
    try:
        with dst:
            _write_compacted(src, dst, drops, skipped, created)
            dst.attrs["nonfinite"] = json.dumps(scan_nonfinite(dst))
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        try:  # a clean failure leaves no half-written file behind (after a kill the next run removes it)
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover
            pass
        raise


def _fsync(path: Path) -> None:
    """Make the bytes of a finished file durable before it is renamed over the final name."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems without fsync
        pass
    finally:
        os.close(fd)


def _copy_attrs(src, dst) -> None:
    """Copy every attribute (same order, values, dtypes and shapes) of one HDF5 object to another."""
    for k in src.attrs:
        aid = src.attrs.get_id(k)
        dst.attrs.create(k, src.attrs[k], shape=aid.shape, dtype=aid.dtype)


def _write_compacted(src, dst, drops: Sequence[Drop], skipped: Sequence[str], created: str) -> None:
    """Fill the new file `dst` from the complete partial `src` (read only): everything but the progress,
    the datasets of `drops` compacted, their row-index datasets rewritten, /skipped, `created` stamped.

    Datasets and attributes are created in the order the former in-place compaction left them in:
    untouched objects first (copied whole by HDF5, storage layout included), then per task its
    compacted targets and its row-index dataset, then /skipped.
    """
    rewritten = {"/" + PROGRESS_GROUP}
    for d in drops:
        rewritten.update("/" + n.strip("/") for n in d.targets)
        rewritten.add("/" + d.rows_name.strip("/"))
    _copy_group_except(src, src, dst, rewritten)
    for d in drops:
        for target in d.targets:
            _compact_into(src[target], dst, target, d.keep, d.axis)
        if d.rows_name not in dst:  # view sets share /splits/train/view_rows (the same bad images in each)
            dst.create_dataset(d.rows_name, data=d.rows)
    if skipped:
        write_strings(dst, "skipped", skipped)
    dst.attrs["created"] = created


def _copy_group_except(src, sg, dg, skip: set[str]) -> None:
    """Copy group `sg` of file `src` into `dg` (attributes, groups, datasets whole) but the objects in `skip`."""
    _copy_attrs(sg, dg)
    for k in sg:
        obj = sg[k]
        if obj.name in skip:
            continue
        if isinstance(obj, h5py.Group):
            _copy_group_except(src, obj, dg.create_group(k), skip)
        else:
            src.copy(obj, dg, name=k)


def _compact_into(old, dst, name: str, keep: np.ndarray, axis: int, slab: int = 4096) -> None:
    """Write dataset `name` of `dst` as `old` keeping only positions `keep` along `axis` (bad images dropped)."""
    shape = list(old.shape)
    shape[axis] = int(keep.size)
    new = dst.create_dataset(name, shape=tuple(shape), dtype=old.dtype, chunks=chunks_for(tuple(shape)))
    _copy_attrs(old, new)
    for s in range(0, keep.size, slab):
        idx = keep[s:s + slab]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if axis == 0:
            new[s:s + idx.size] = old[lo:hi][idx - lo]
        else:
            new[:, s:s + idx.size] = old[:, lo:hi][:, idx - lo]
