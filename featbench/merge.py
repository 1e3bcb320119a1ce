"""Merge part caches (one per torchrun rank, or any caches of the same data) into one schema-v1 cache.

Why a merge step: distributed extraction has every rank encode a disjoint shard of the rows and write its
own part file, so no two processes ever write the same HDF5 file. Each part carries the *full* split index
and features for a subset of rows (``rows``), views for a subset (``view_rows``). The merge

- refuses parts that disagree on anything that defines the data: encoder fingerprint, model, dataset,
  class names, text features, split index (and any other non-row dataset such as /model/*);
- writes features for the union of rows in canonical order (sorted row indices); a row present in several
  parts must carry identical features (so overlapping or re-run parts are harmless), else it is an error;
- omits ``rows`` when every row is covered, merges views the same way along their row axis, unions the
  ``skipped`` list, keeps the parts' attributes with a fresh ``created`` time;
- writes to a temporary file and renames it, so a crash never leaves a half-written cache behind.

The result equals the cache a single process would have written for the same rows, dataset for dataset.
It streams rows in blocks, so merging ImageNet-sized parts never holds a whole split in memory.

It copies datasets verbatim (dtype, chunking and dataset attributes included), which ``cache.write_cache``
cannot do for arbitrary additive datasets (``skipped``, ``views_pre``, /model/*), through the cache package's
verbatim functions (``open_file``, ``copy_dataset``, ``create_along``...): the HDF5 work stays there, the
merge rules stay here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from featbench.cache import (
    SPLITS,
    Cache,
    copy_attrs,
    copy_dataset,
    create_along,
    dataset_items,
    group_names,
    job_differences,
    open_file,
    read_along,
    read_strings,
    scan_nonfinite,
    write_along,
    write_strings,
)
from featbench.diskspace import check_free_space, disk_full_as_error
from featbench.errors import FeatbenchError

#: datasets indexed by split row along axis 0 (merged), per split group
ROW_DATASETS = ("features", "features_pre")
#: datasets indexed by train row along axis 1 (merged), in /splits/train
VIEW_DATASETS = ("views", "views_pre", "views_2", "views_2_pre", "views_3", "views_3_pre", "views_4", "views_4_pre")
#: attributes a single-process cache would not have (a part's own bookkeeping); dropped on merge
PART_ATTRS = ("shard", "shard_rank", "shard_world", "part_of")
#: root attributes that must agree between parts (beyond the fingerprint)
IDENTITY_ATTRS = ("featbench_schema", "model", "pretrained", "dataset", "embed_dim", "logit_scale", "fingerprint")

_BLOCK = 65536  # rows per streamed block


def part_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    """``<cache>.part-<rank>-of-<world>.h5`` next to the final cache (what each torchrun rank writes)."""
    out = Path(out)
    return out.with_name(f"{out.name}.part-{int(rank)}-of-{int(world)}.h5")


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
        return [(_attr(x)) for x in a.ravel()] == [(_attr(x)) for x in b.ravel()]
    return bool(np.array_equal(a, b))


def _is_merged(name: str) -> bool:
    parts = name.strip("/").split("/")
    if name == "/skipped":
        return True
    if len(parts) == 3 and parts[0] == "splits":
        leaf = parts[2]
        return leaf in ROW_DATASETS or leaf == "rows" or (parts[1] == "train" and (leaf in VIEW_DATASETS or leaf == "view_rows"))
    return False


class _Part:
    """An open part file with its validated identity."""

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            raise FeatbenchError(f"part {path} does not exist; check the paths given to `featbench merge`")
        Cache(path).close()  # validates the schema-v1 contract with its clear messages
        self.f = open_file(path)
        if "_progress" in self.f:
            self.f.close()
            raise FeatbenchError(f"part {path} is an unfinished extraction; rerun its extraction command to finish it, then merge")
        self.attrs = {k: _attr(v) for k, v in self.f.attrs.items()}
        self.datasets = dataset_items(self.f)

    def rows(self, split: str, what: str) -> np.ndarray:
        g = self.f["splits"][split]
        key = "rows" if what == "features" else "view_rows"
        if key in g:
            return np.asarray(g[key][()], dtype=np.int64)
        if what == "views":
            return np.zeros(0, dtype=np.int64)
        return np.arange(g["paths"].shape[0], dtype=np.int64)

    def close(self) -> None:
        self.f.close()


def _check_identity(ref: _Part, part: _Part) -> None:
    for key in IDENTITY_ATTRS:
        if ref.attrs.get(key) != part.attrs.get(key):
            what = "encoder fingerprint" if key == "fingerprint" else key
            raise FeatbenchError(
                f"part {part.path} has {what} {str(part.attrs.get(key))[:16]!r} but {ref.path} has "
                f"{str(ref.attrs.get(key))[:16]!r}; merge only parts of one extraction (same --model/--pretrained/--dataset)"
            )
    job_a, job_b = ref.attrs.get("extraction"), part.attrs.get("extraction")
    if job_a is not None and job_b is not None and job_a != job_b:
        diff = job_differences(json.loads(job_a), json.loads(job_b))
        raise FeatbenchError(f"part {part.path} was extracted with other arguments than {ref.path} ({', '.join(diff)}); "
                             "merge only parts of one extraction")
    fixed_ref = {n for n in ref.datasets if not _is_merged(n)}
    fixed_part = {n for n in part.datasets if not _is_merged(n)}
    if fixed_ref != fixed_part:
        diff = sorted(fixed_ref ^ fixed_part)
        raise FeatbenchError(f"part {part.path} differs from {ref.path} in which datasets it holds ({', '.join(diff[:3])}); "
                             "merge only parts of one extraction")
    labels = {"/classnames": "class names", "/text/features": "text features"}
    for name in sorted(fixed_ref):
        a, b = ref.datasets[name], part.datasets[name]
        if a.shape != b.shape or not _same(a[()], b[()]):
            what = labels.get(name) or ("split index" if name.endswith(("/paths", "/labels")) else name)
            raise FeatbenchError(f"part {part.path} has different {what} ({name}) than {ref.path}; "
                                 "merge only parts of one extraction over the same dataset files")
    for split in ref.f["splits"]:
        for name in ROW_DATASETS:
            full = f"/splits/{split}/{name}"
            if (full in ref.datasets) != (full in part.datasets):
                raise FeatbenchError(f"part {part.path} differs from {ref.path}: only one of them has {full}")
    a_views, b_views = "/splits/train/views" in ref.datasets, "/splits/train/views" in part.datasets
    if a_views and b_views and ("/splits/train/views_pre" in ref.datasets) != ("/splits/train/views_pre" in part.datasets):
        raise FeatbenchError(f"part {part.path} differs from {ref.path}: only one of them has /splits/train/views_pre")
    # a shard that holds no view rows may carry no views at all: that is not a mismatch


def _merge_axis(parts: list[_Part], out_f, split: str, names: Sequence[str], what: str, axis: int) -> None:
    """Merge the row-indexed datasets `names` of one split over all parts (union, canonical order, dedupe)."""
    have = [p for p in parts if names[0] in p.f["splits"][split]]
    if not have:
        return
    rows_per_part = [p.rows(split, what) for p in have]
    union = np.unique(np.concatenate(rows_per_part)) if rows_per_part else np.zeros(0, dtype=np.int64)
    n_index = int(have[0].f["splits"][split]["paths"].shape[0])
    if union.size and (union[0] < 0 or union[-1] >= n_index):
        raise FeatbenchError(f"part {have[0].path}: /splits/{split} lists rows outside its index of {n_index}")
    g = out_f.require_group(f"splits/{split}")
    ref_part = have[0]
    for name in names:
        srcs = [(p, r) for p, r in zip(have, rows_per_part) if name in p.f["splits"][split]]
        if not srcs:
            continue
        src0 = ref_part.f["splits"][split][name]
        shape = list(src0.shape)
        shape[axis] = union.size
        if axis == 1:
            v_counts = {p.f["splits"][split][name].shape[0] for p, _ in srcs}
            if len(v_counts) > 1:
                bad = next(p for p, _ in srcs if p.f["splits"][split][name].shape[0] != src0.shape[0])
                raise FeatbenchError(f"part {bad.path} has {bad.f['splits'][split][name].shape[0]} views per image but "
                                     f"{ref_part.path} has {src0.shape[0]}; merge only parts extracted with the same --views")
        dst = create_along(g, name, src0, tuple(shape), axis)
        filled = np.zeros(union.size, dtype=bool)
        for part, prow in srcs:
            src = part.f["splits"][split][name]
            for start in range(0, prow.size, _BLOCK):
                block_rows = prow[start:start + _BLOCK]
                if src.dtype != src0.dtype:
                    raise FeatbenchError(f"part {part.path} stores /splits/{split}/{name} as {src.dtype} but {ref_part.path} "
                                         f"as {src0.dtype}; merge only parts extracted with the same --dtype")
                data = np.asarray(src[start:start + block_rows.size] if axis == 0 else src[:, start:start + block_rows.size])
                order = np.argsort(block_rows, kind="stable")
                block_rows = block_rows[order]
                data = np.take(data, order, axis=axis)
                if np.any(np.diff(block_rows) == 0):
                    raise FeatbenchError(f"part {part.path}: /splits/{split}/{name} lists a row twice; re-extract that part")
                pos = np.searchsorted(union, block_rows)
                seen = filled[pos]
                if seen.any():
                    old = read_along(dst, pos[seen], axis)
                    new = np.take(data, np.flatnonzero(seen), axis=axis)
                    if old.shape != new.shape or np.ascontiguousarray(old).tobytes() != np.ascontiguousarray(new).tobytes():
                        bad_row = int(block_rows[seen][0])
                        raise FeatbenchError(
                            f"part {part.path}: row {bad_row} of /splits/{split}/{name} is also in an earlier part with "
                            "different features; parts overlap but disagree — re-extract one of them"
                        )
                fresh = ~seen
                write_along(dst, pos[fresh], np.take(data, np.flatnonzero(fresh), axis=axis), axis)
                filled[pos] = True
    row_key = "rows" if what == "features" else "view_rows"
    if what == "views" or union.size != n_index or not np.array_equal(union, np.arange(n_index)):
        dst = g.create_dataset(row_key, data=union.astype(np.int64))
        src_rows = next((p.f["splits"][split][row_key] for p in have if row_key in p.f["splits"][split]), None)
        if src_rows is not None:
            copy_attrs(src_rows, dst)


def _merge_skipped(parts: list[_Part], out_f) -> None:
    """Union of the parts' skipped lists, in canonical order (split order, then row) where the path is known."""
    seen: list[str] = []
    for p in parts:
        if "skipped" in p.f:
            for s in read_strings(p.f["skipped"]):
                if s not in seen:
                    seen.append(s)
    attr_lists = []
    for p in parts:
        raw = p.attrs.get("skipped")
        if isinstance(raw, str) and raw.startswith("["):
            attr_lists.append(json.loads(raw))
    if not seen and not attr_lists and not any("skipped" in p.f for p in parts):
        return
    ref = parts[0]
    order: dict[str, tuple[int, int]] = {}
    for si, split in enumerate(s for s in SPLITS if s in ref.f["splits"]):
        for row, path in enumerate(read_strings(ref.f["splits"][split]["paths"])):
            order.setdefault(path, (si, row))
    key = lambda s: order.get(s, order.get(s.split(":", 1)[-1], (1 << 30, 0)))  # noqa: E731
    if any("skipped" in p.f for p in parts):
        merged = sorted(seen, key=key)
        src0 = next(p.f["skipped"] for p in parts if "skipped" in p.f)
        copy_attrs(src0, write_strings(out_f, "skipped", merged))
    if attr_lists:
        union: list = []
        for lst in attr_lists:
            for s in lst:
                if s not in union:
                    union.append(s)
        out_f.attrs["skipped"] = json.dumps(sorted(union, key=lambda s: key(s) if isinstance(s, str) else (1 << 30, 0)))


def merge_parts(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Merge schema-v1 part caches into one cache at `out` (see the module docstring); returns `out`."""
    paths = [Path(p) for p in parts]
    out = Path(out)
    if not paths:
        raise FeatbenchError("featbench merge needs at least one part cache")
    if len({p.resolve() for p in paths}) != len(paths):
        raise FeatbenchError("the same part file is given twice to `featbench merge`; list each part once")
    if out.resolve() in {p.resolve() for p in paths}:
        raise FeatbenchError(f"--out {out} is one of the parts; write the merged cache to a new path")
    if out.exists() and not overwrite:
        raise FeatbenchError(f"{out} already exists; pass --overwrite to replace it")
    tmp = out.with_name(out.name + ".merge-tmp")
    sizes = [p.stat().st_size for p in paths if p.is_file()]
    then = "no merged file was left behind; rerun the same command once there is room"
    # the merged cache holds every row of every part: at least the largest part, at most all of them
    check_free_space(out.parent, max(sizes, default=0), out.name, then)
    with disk_full_as_error(out.parent, out.name, sum(sizes), then):
        _write_merged(paths, out, tmp)
    Cache(out).close()  # the result must satisfy the same contract as any cache
    return out


def _write_merged(paths: list[Path], out: Path, tmp: Path) -> None:
    """Merge the parts into `tmp` and rename it to `out`; any failure removes `tmp`."""
    opened: list[_Part] = []
    try:
        for p in paths:
            opened.append(_Part(p))
        ref = opened[0]
        for part in opened[1:]:
            _check_identity(ref, part)
        out.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            tmp.unlink()
        with open_file(tmp, "w") as f:
            for k, v in ref.f.attrs.items():
                if k not in PART_ATTRS and k != "skipped":
                    f.attrs[k] = v
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            # everything that is not row-indexed is identical in every part: copy it verbatim
            for name in ref.datasets:
                if _is_merged(name):
                    continue
                copy_dataset(ref.f, name, f)
            for group_name in group_names(ref.f):
                copy_attrs(ref.f[group_name], f.require_group(group_name))
            for split in ref.f["splits"]:
                names = [n for n in ROW_DATASETS if n in ref.f["splits"][split] or any(n in p.f["splits"][split] for p in opened)]
                _merge_axis(opened, f, split, names, "features", axis=0)
                if split == "train":
                    vnames = [n for n in VIEW_DATASETS if any(n in p.f["splits"][split] for p in opened)]
                    if vnames:
                        _merge_axis(opened, f, split, vnames, "views", axis=1)
            _merge_skipped(opened, f)
            f.attrs["nonfinite"] = json.dumps(scan_nonfinite(f))  # the parts' flags say nothing about the whole
        for p in opened:
            p.close()
        opened = []
        os.replace(tmp, out)
    except BaseException:
        for p in opened:
            p.close()
        if tmp.is_file():
            tmp.unlink()
        raise


__all__ = ["merge_parts", "part_path"]
