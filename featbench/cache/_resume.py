"""Incremental, resumable writing (what `featbench extract` uses).

`CacheWriter` builds a cache in `<name>.h5.partial`: everything known up front is written at once and
the feature arrays are preallocated; then blocks of rows are filled, each flushed before its done flag
under /_progress is set. A rerun checks that the partial belongs to the same work (fingerprint and
extraction job) and continues with the blocks not yet done; `finalize` drops unreadable images and
renames the result into place. A distributed rank uses the same writer on its own part file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from featbench.cache._compact import plan_drops, replace_with_compacted
from featbench.cache._schema import PROGRESS_GROUP, decode, partial_path, utc_now
from featbench.cache._validate import scan_nonfinite
from featbench.cache._writer import chunks_for, write_array, write_split_index, write_strings, write_text
from featbench.diskspace import check_free_space
from featbench.errors import FeatbenchError, FingerprintMismatch


def read_identity(path: str | os.PathLike) -> tuple[str | None, dict | None]:
    """(fingerprint, extraction job) recorded in a final or partial cache; (None, None) if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            fp = decode(f.attrs.get("fingerprint"))
            job = decode(f.attrs.get("extraction"))
            return (str(fp) if fp is not None else None), (json.loads(job) if job else None)
    except (OSError, ValueError, KeyError):
        return None, None


def job_differences(a: Mapping | None, b: Mapping | None) -> list[str]:
    """Keys whose values differ between two extraction jobs (sorted)."""
    a, b = dict(a or {}), dict(b or {})
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _canonical_job(job: Mapping) -> dict:
    """The job as it reads back from the file's JSON attribute (so comparisons are like for like)."""
    return json.loads(json.dumps(dict(job), sort_keys=True, default=str))


def remove_stale_partial(path: str | os.PathLike, fingerprint: str, job: Mapping) -> bool:
    """Delete `<path>.partial` when `path` is already a finished cache of the same work: what a kill
    between the rename of a finalised cache and the deletion of its partial leaves behind.
    A partial of other work, or one open in a running extraction, is left alone."""
    partial = partial_path(path)
    if not partial.exists():
        return False
    try:  # locked: a running extraction (e.g. --overwrite) owns it
        h5py.File(partial, "r").close()
    except OSError:
        return False
    fp, old_job = read_identity(partial)
    if fp != str(fingerprint) or job_differences(old_job, _canonical_job(job)):
        return False
    partial.unlink(missing_ok=True)
    return True


@dataclass
class BlockTask:
    """A unit of resumable work: `n` positions along `axis` of the datasets in `targets`, done in blocks.

    name: progress key (e.g. "test/features"); targets: absolute dataset names written together
    (e.g. features and features_pre); block: positions per block (recorded, so a resume with another
    --batch-size still cuts the same blocks and reproduces the same numbers).
    """

    name: str
    n: int
    block: int
    targets: tuple[str, ...]
    axis: int = 0

    @property
    def n_blocks(self) -> int:
        return (self.n + self.block - 1) // self.block if self.n else 0

    def bounds(self, b: int) -> tuple[int, int]:
        return b * self.block, min((b + 1) * self.block, self.n)


# ----------------------------------------------------------------------------------------------------
# creating: the file is built under `<partial>.init` and renamed, so a partial always opens cleanly
# ----------------------------------------------------------------------------------------------------
def _new_file(final: Path, init: Path) -> h5py.File:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if init.exists():
            init.unlink()
        return h5py.File(init, "w")
    except OSError as err:
        raise FeatbenchError(
            f"cannot write {init} ({err.strerror or err}); pass a writable --out or --cache-dir"
        ) from None


def _remove(path: Path) -> None:
    """Delete a file of ours if it is there (a path that cannot exist, under a file, is fine too)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _write_identity(f, attrs: Mapping, fingerprint: str, job: dict, shard: str | None) -> None:
    """The given root attributes, then what makes a partial resumable: fingerprint, job and shard."""
    for k, v in attrs.items():
        f.attrs[k] = v
    f.attrs["fingerprint"] = fingerprint
    f.attrs["extraction"] = json.dumps(job, sort_keys=True)
    if shard:
        f.attrs["shard"] = shard


def _preallocate(group, name: str, shape: tuple[int, ...], dtype) -> None:
    """A chunked dataset whose chunks are all allocated now, so later writes change raw data only
    (no HDF5 metadata) — which is what makes a `kill -9` between flushes harmless."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks_for(shape), dcpl=dcpl, fillvalue=0)


def _write_progress(f, tasks: Sequence[BlockTask]) -> None:
    """/_progress/<task>: the task's shape as attributes, a done flag per block and a bad flag per position."""
    pg = f.create_group(PROGRESS_GROUP)
    for t in tasks:
        g = pg.create_group(t.name)
        g.attrs["n"], g.attrs["block"], g.attrs["axis"] = t.n, t.block, t.axis
        g.attrs["targets"] = json.dumps(list(t.targets))
        _preallocate(g, "done", (max(t.n_blocks, 0),), np.int8)
        _preallocate(g, "bad", (t.n,), np.int8)


def _write_small(f, extra: Mapping[str, np.ndarray]) -> None:
    """Small arrays known up front (row lists, projections); float data as float32."""
    for name, arr in extra.items():
        arr = np.asarray(arr)
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        f.create_dataset(name, data=arr)


# ----------------------------------------------------------------------------------------------------
# resuming: a partial is reused only when it is the same work, unlocked, and intact
# ----------------------------------------------------------------------------------------------------
def _locked(partial: Path) -> FeatbenchError:
    return FeatbenchError(
        f"{partial} is locked by another running extraction; wait for it to finish (or stop it), then rerun"
    )


def _refuse_if_locked(partial: Path) -> None:
    """HDF5 locks a file open for writing: never touch the partial of a running extraction."""
    try:
        h5py.File(partial, "r").close()
    except BlockingIOError:
        raise _locked(partial) from None
    except OSError:
        pass  # unreadable: the identity check finds out


def _open_partial(partial: Path, fingerprint: str, job: dict, shard: str | None):
    """(file open for appending, its tasks) when `partial` holds this work and can go on; None when it
    must start again (unreadable after a kill mid-write, no progress, or a target already compacted).
    Raises when it holds other work or is locked by a running extraction."""
    fp, old_job = read_identity(partial)
    if fp is None:
        return None
    if fp != fingerprint or job_differences(old_job, job):
        what = "encoder/preprocessing (fingerprint)" if fp != fingerprint else "arguments " + ", ".join(job_differences(old_job, job))
        raise FingerprintMismatch(
            f"{partial} is a partial extraction with a different {what}; rerun with its original "
            "arguments to resume it, or pass --overwrite to start over"
        )
    try:
        f = h5py.File(partial, "r+")
    except BlockingIOError:
        raise _locked(partial) from None
    except OSError:
        return None
    try:
        _check_shard(f, partial, shard)
        tasks = _read_progress(f) if PROGRESS_GROUP in f else None
        if tasks is not None and _targets_intact(f, tasks):
            return f, tasks
    except BaseException:
        f.close()
        raise
    f.close()
    return None


def _check_shard(f, partial: Path, shard: str | None) -> None:
    old_shard = decode(f.attrs.get("shard"))
    if (old_shard or None) != (shard or None):
        raise FingerprintMismatch(
            f"{partial} is a partial extraction of shard {old_shard or 'none'}, not {shard or 'none'}; "
            "rerun with the original torchrun world size and --batch-size to resume it, or pass --overwrite to start over"
        )


def _read_progress(f) -> dict[str, BlockTask]:
    """The tasks recorded under /_progress; task names may contain one '/' (split/kind)."""
    tasks = {}
    for k, g in f[PROGRESS_GROUP].items():
        found = [(k, g)] if "done" in g else [(f"{k}/{k2}", g2) for k2, g2 in g.items()]
        for name, tg in found:
            tasks[name] = BlockTask(
                name=name, n=int(tg.attrs["n"]), block=int(tg.attrs["block"]),
                targets=tuple(json.loads(tg.attrs["targets"])), axis=int(tg.attrs["axis"]),
            )
    return tasks


def _targets_intact(f, tasks: Mapping[str, BlockTask]) -> bool:
    """Drop the scratch copies (`<name>__compact`) an older featbench left when killed while compacting
    in place; False when a target was already replaced or removed (the partial must start again)."""
    for t in tasks.values():
        for name in t.targets:
            if name + "__compact" in f:
                del f[name + "__compact"]
        if any(name not in f or len(f[name].shape) <= t.axis or f[name].shape[t.axis] != t.n for name in t.targets):
            return False
    return True


# ----------------------------------------------------------------------------------------------------
# the writer
# ----------------------------------------------------------------------------------------------------
class CacheWriter:
    """Builds a schema-v1 cache in `<path>.partial`, block by block, then renames it into place.

    Progress lives in the partial file itself: `/_progress/<task>/done` (one flag per block) and
    `/_progress/<task>/bad` (one flag per position: unreadable image, dropped at finalisation).
    Every block is flushed before its done flag is set, so a killed run loses at most the blocks in
    flight. The identity of the work (fingerprint + extraction job) is checked before resuming.
    A distributed rank uses the same writer on its own part file with its shard of rows.
    """

    def __init__(self, path: str | os.PathLike, *, fingerprint: str, job: Mapping, shard: str | None = None):
        self.path = Path(path)
        self.shard = shard
        self.partial = partial_path(self.path)
        self.fingerprint = str(fingerprint)
        self.job = _canonical_job(job)
        self._f = None
        self.tasks: dict[str, BlockTask] = {}

    @property
    def init_path(self) -> Path:
        """Where `create` builds the partial before renaming it (`<partial>.init`)."""
        return self.partial.with_name(self.partial.name + ".init")

    def discard(self) -> None:
        """Close and delete the partial (and any half-built `.init`): work that can never finish as asked."""
        self.close()
        _remove(self.partial)
        _remove(self.init_path)

    # -- resuming ------------------------------------------------------------------------------------
    def try_resume(self, overwrite: bool = False) -> bool:
        """Open an existing partial file of the same job; False when there is none (or it was unusable)."""
        if not self.partial.exists():
            return False
        _refuse_if_locked(self.partial)
        if overwrite:
            self.partial.unlink()
            return False
        opened = _open_partial(self.partial, self.fingerprint, self.job, self.shard)
        if opened is None:
            self.partial.unlink()
            return False
        self._f, self.tasks = opened
        return True

    # -- creating ------------------------------------------------------------------------------------
    def create(
        self,
        *,
        attrs: Mapping,
        classnames: Sequence[str],
        splits: Mapping[str, Mapping],
        text_features: np.ndarray | None = None,
        templates: Sequence[str] | None = None,
        text_features_pre: np.ndarray | None = None,
        arrays: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
        extra: Mapping[str, np.ndarray] | None = None,
        tasks: Sequence[BlockTask] = (),
        dtype: str = "float16",
    ) -> None:
        """Write everything known up front and preallocate the arrays to be filled block by block.

        splits: split -> {"paths", "labels"[, "rows"]}; arrays: absolute name -> (shape, dtype) to
        preallocate; extra: absolute name -> small array written now (row lists, projections).
        The file is built under a temporary name and renamed, so a partial always opens cleanly.
        """
        init = self.init_path
        try:
            with _new_file(self.path, init) as f:
                _write_identity(f, attrs, self.fingerprint, self.job, self.shard)
                write_strings(f, "classnames", classnames)
                if text_features is not None:
                    g = write_text(f, text_features, templates, dtype)
                    if text_features_pre is not None:
                        write_array(g, "features_pre", text_features_pre, dtype)
                sg = f.create_group("splits")
                for name, s in splits.items():
                    write_split_index(sg, name, s)
                _write_small(f, extra or {})
                for name, (shape, dt) in (arrays or {}).items():
                    parent, _, leaf = name.strip("/").rpartition("/")
                    _preallocate(f.require_group(parent) if parent else f, leaf, tuple(int(s) for s in shape), dt)
                _write_progress(f, tasks)
            os.replace(init, self.partial)
        except BaseException:  # a full disk or an interruption while laying out: no half-built file stays behind
            _remove(init)
            raise
        self._f = h5py.File(self.partial, "r+")
        self.tasks = {t.name: t for t in tasks}

    def set_attr(self, name: str, key: str, value) -> None:
        """Set an attribute of an existing dataset of the partial (no-op when absent), e.g. a view set's scale."""
        if name in self._f:
            self._f[name].attrs[key] = np.asarray(value)
            self._f.flush()

    # -- progress ------------------------------------------------------------------------------------
    def pending_blocks(self, task: str) -> list[int]:
        t = self.tasks[task]
        if not t.n_blocks:
            return []
        done = self._f[PROGRESS_GROUP][task]["done"][()]
        return [b for b in range(t.n_blocks) if not done[b]]

    def write_block(self, task: str, block: int, data: Sequence[np.ndarray], bad: Iterable[int] = ()) -> None:
        """Store one block (one array per target, block positions along the task axis), then mark it done.

        bad: positions (within the whole task) whose images could not be read; dropped at finalisation.
        """
        t = self.tasks[task]
        start, stop = t.bounds(block)
        for name, arr in zip(t.targets, data, strict=True):
            ds = self._f[name]
            arr = np.asarray(arr).astype(ds.dtype, copy=False)
            if t.axis == 0:
                ds[start:stop] = arr
            else:
                ds[:, start:stop] = arr
        g = self._f[PROGRESS_GROUP][task]
        bad = sorted(int(b) for b in bad)
        if bad:
            flags = g["bad"][start:stop]
            for b in bad:
                flags[b - start] = 1
            g["bad"][start:stop] = flags
        self._f.flush()  # data first ...
        g["done"][block] = 1
        self._f.flush()  # ... then the flag that says it is there

    def blocks_done(self) -> tuple[int, int]:
        """(blocks done, blocks in all) of the partial, read from the file even after it was closed."""
        total = sum(t.n_blocks for t in self.tasks.values())
        if self._f is not None:
            return total - sum(len(self.pending_blocks(name)) for name in self.tasks), total
        with h5py.File(self.partial, "r") as f:
            done = sum(int(np.count_nonzero(f[PROGRESS_GROUP][name]["done"][()])) for name in self.tasks)
        return done, total

    def bad_positions(self, task: str) -> np.ndarray:
        return np.flatnonzero(self._f[PROGRESS_GROUP][task]["bad"][()]).astype(np.int64)

    # -- finishing -----------------------------------------------------------------------------------
    def finalize(self, *, row_sets: Mapping[str, tuple[str, str]], created: str | None = None) -> tuple[Path, list[str]]:
        """Drop bad rows, write /skipped, remove progress, stamp `created`, rename into place.

        row_sets: task name -> (row-index dataset name, split name) telling which stored row list
        (e.g. /splits/test/rows, /splits/train/view_rows) a task's positions refer to.
        Returns (final path, skipped relative paths).

        Without bad rows the partial itself becomes the cache. With bad rows the cache is written to a
        new file (see `_compact`) renamed into place before the partial is deleted, so a kill at any
        moment leaves either the complete partial (a rerun finalises it again) or the final cache.
        """
        for name in self.tasks:
            if self.pending_blocks(name):
                raise FeatbenchError(f"{self.partial}: task {name} is not finished; cannot finalise")
        bad = {name: self.bad_positions(name) for name in self.tasks}
        drops, skipped = plan_drops(self._f, self.tasks, bad, row_sets)
        stamp = created or utc_now()
        if not drops:  # nothing to drop: the partial is the cache
            self._finish_in_place(stamp)
            return self.path, skipped
        # the partial stays open (and locked) but is only read from here on; the copy needs about its size
        check_free_space(self.path.parent, self.partial.stat().st_size, f"{self.path.name} (dropping unreadable images)",
                         "the finished partial is kept; rerun the same command once there is room")
        replace_with_compacted(self._f, self.path, drops, skipped, stamp)
        self.close()
        self.partial.unlink(missing_ok=True)
        return self.path, skipped

    def _finish_in_place(self, stamp: str) -> None:
        f = self._f
        del f[PROGRESS_GROUP]
        f.attrs["nonfinite"] = json.dumps(scan_nonfinite(f))
        f.attrs["created"] = stamp
        f.flush()
        f.close()
        self._f = None
        os.replace(self.partial, self.path)

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None

