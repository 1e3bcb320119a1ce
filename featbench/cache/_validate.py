"""The schema-v1 contract, checked: wrong types, shapes, out-of-range row indices and NaN/Inf are one
clear line naming the file and dataset, not a traceback deep inside a head.
"""

from __future__ import annotations

import h5py
import numpy as np

from featbench.cache._schema import PROGRESS_GROUP, REQUIRED_ATTRS, SCHEMA_VERSION, SPLITS, VIEW_SET_NAMES, decode
from featbench.errors import CacheContractError, FeatbenchError, short_repr

REEXTRACT = "re-extract the cache (`featbench extract --overwrite`) or re-import the features"


def missing(path, what: str) -> CacheContractError:
    """The error for a part of the contract a file lacks."""
    return CacheContractError(f"{path}: missing {what} (required by the featbench schema-v1 cache contract)")


def require_finite(arr: np.ndarray, what: str) -> np.ndarray:
    """`arr` if every value is finite, else a CacheContractError naming `what` (a cache and dataset path)."""
    arr = np.asarray(arr)
    if not arr.size or not np.issubdtype(arr.dtype, np.floating):
        return arr
    flat = arr.reshape(-1)
    step = 1 << 22  # bounded temporaries: a 50k x 1024 test split is checked in ~12 slices
    if not all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.size, step)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise CacheContractError(f"{what} holds {bad} NaN/Inf value(s); results from it would be meaningless; {REEXTRACT}")
    return arr


class DtypeRangeError(FeatbenchError):
    """Features too large for the cache's on-disk dtype (float16 stops at 65504): they would be stored as Inf."""


def require_fits_dtype(arr, dtype, what: str, fix: str) -> None:
    """Refuse finite features that storing as ``dtype`` would turn into Inf (float16 stops at ±65504); the
    one line names ``what`` and says ``fix`` (the flag that stores them, e.g. "import with --dtype float32")."""
    arr = np.asarray(arr)
    if np.dtype(dtype) != np.float16 or not arr.size or not np.issubdtype(arr.dtype, np.floating):
        return
    with np.errstate(over="ignore", invalid="ignore"):
        lost = np.isfinite(arr) & ~np.isfinite(arr.astype(np.float16))
    if lost.any():
        peak = float(np.abs(arr[lost]).max())
        raise DtypeRangeError(f"{what} has values up to {peak:.4g}, beyond float16's range "
                              f"(±{float(np.finfo(np.float16).max):.0f}), which would be stored as Inf; {fix}")


def scan_nonfinite(f, slab_bytes: int = 64 << 20) -> list[str]:
    """Names of the float datasets in an open HDF5 file holding NaN/Inf (read slab by slab)."""
    found: list[str] = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or not np.issubdtype(obj.dtype, np.floating) or obj.size == 0:
            return
        if name.startswith(PROGRESS_GROUP):
            return
        if obj.ndim == 0:
            ok = bool(np.isfinite(obj[()]))
        else:
            per = max(1, obj.size // max(obj.shape[0], 1)) * obj.dtype.itemsize
            step = max(1, slab_bytes // per)
            ok = all(np.isfinite(obj[i:i + step]).all() for i in range(0, obj.shape[0], step))
        if not ok:
            found.append("/" + name)

    f.visititems(visit)
    return found


# ----------------------------------------------------------------------------------------------------
# the whole file, in the order a reader meets it: root attributes, splits, class names, text, views
# ----------------------------------------------------------------------------------------------------
def validate_file(path, f) -> None:
    """Check an open file against the schema-v1 contract (what `Cache` does on open)."""
    _check_root(path, f)
    d = int(decode(f.attrs["embed_dim"]))
    n_classes = int(f["classnames"].shape[0])
    for split in (s for s in SPLITS if s in f["splits"]):
        _check_split(path, f["splits"][split], split, d, n_classes)
    check_dtype(path, f["classnames"], "/classnames", "str")
    if "text" in f and "features" in f["text"]:
        _check_text(path, f["text"]["features"], d, n_classes)
    if "train" in f["splits"] and "views" in f["splits"]["train"]:
        _check_views(path, f["splits"]["train"], d)


def _check_root(path, f) -> None:
    for key in REQUIRED_ATTRS:
        if key not in f.attrs:
            raise missing(path, f"root attribute '{key}'")
    check_attr_types(path, f.attrs)
    schema = int(f.attrs["featbench_schema"])
    if schema != SCHEMA_VERSION:
        raise CacheContractError(f"{path}: featbench_schema={schema}, this featbench reads schema {SCHEMA_VERSION}")
    if "classnames" not in f:
        raise missing(path, "dataset /classnames")
    if "splits" not in f or not any(s in f["splits"] for s in SPLITS):
        raise missing(path, "group /splits/<train|val|test>")


def _check_split(path, g, split: str, d: int, n_classes: int) -> None:
    for name in ("paths", "labels", "features"):
        if name not in g:
            raise missing(path, f"/splits/{split}/{name}")
    for name, kind in (("paths", "str"), ("labels", "int"), ("features", "float")):
        check_dtype(path, g[name], f"/splits/{split}/{name}", kind)
    n = g["paths"].shape[0]
    if g["labels"].shape != (n,):
        raise CacheContractError(f"{path}: /splits/{split}/labels has shape {g['labels'].shape}, expected ({n},) like paths")
    feats = g["features"]
    if feats.ndim != 2 or feats.shape[1] != d:
        raise CacheContractError(f"{path}: /splits/{split}/features has shape {feats.shape}, expected [M, {d}] (embed_dim)")
    m = feats.shape[0]
    if "rows" in g:
        if g["rows"].shape != (m,):
            raise CacheContractError(f"{path}: /splits/{split}/rows has shape {g['rows'].shape}, expected ({m},) like features")
        check_rows(path, g["rows"], f"/splits/{split}/rows", n)
    elif m != n:
        raise CacheContractError(
            f"{path}: /splits/{split}/features has {m} rows but the split index has {n}; add /splits/{split}/rows"
        )
    if n:
        labels = g["labels"][()]
        if labels.min() < 0 or labels.max() >= n_classes:
            raise CacheContractError(f"{path}: /splits/{split}/labels outside [0, {n_classes}) (the number of classnames)")


def _check_text(path, t, d: int, n_classes: int) -> None:
    check_dtype(path, t, "/text/features", "float")
    if t.ndim != 3 or t.shape[1] != n_classes or t.shape[2] != d:
        raise CacheContractError(f"{path}: /text/features has shape {t.shape}, expected [T, {n_classes}, {d}]")


def _check_views(path, g, d: int) -> None:
    if "view_rows" not in g:
        raise missing(path, "/splits/train/view_rows (needed with /splits/train/views)")
    check_rows(path, g["view_rows"], "/splits/train/view_rows", g["paths"].shape[0])
    k = g["view_rows"].shape[0]
    for name in VIEW_SET_NAMES:
        if name not in g:
            continue
        v = g[name]
        check_dtype(path, v, f"/splits/train/{name}", "float")
        if v.ndim != 3 or v.shape[1] != k or v.shape[2] != d:
            raise CacheContractError(f"{path}: /splits/train/{name} has shape {v.shape}, expected [V, K={k}, {d}]")


# ----------------------------------------------------------------------------------------------------
# single checks
# ----------------------------------------------------------------------------------------------------
def check_attr_types(path, attrs) -> None:
    """Root attributes of the right kind: integers, a positive finite logit scale, strings."""
    def bad(key: str, want: str) -> CacheContractError:
        text = short_repr(decode(attrs[key]))
        return CacheContractError(f"{path}: root attribute '{key}' = {text} must be {want}; {REEXTRACT}")

    for key in ("featbench_schema", "embed_dim"):
        v = attrs[key]
        whole = isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())
        if isinstance(v, (bool, np.bool_)) or not whole or (key == "embed_dim" and int(v) < 1):
            raise bad(key, "a positive integer" if key == "embed_dim" else "an integer")
    v = attrs["logit_scale"]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not np.isfinite(float(v)) or float(v) <= 0:
        raise bad("logit_scale", "a finite number > 0 (CLIP's exponentiated logit scale, e.g. 100)")
    for key in ("model", "pretrained", "dataset", "fingerprint"):
        if not isinstance(attrs[key], (str, bytes)):
            raise bad(key, "a string")


_KINDS = {"str": "UTF-8 strings", "int": "integers", "float": "floating-point numbers"}


def check_dtype(path, ds, name: str, kind: str) -> None:
    """`ds` holds values of `kind` ("str", "int" or "float")."""
    dt = ds.dtype
    if kind == "str":
        ok = h5py.check_string_dtype(dt) is not None
    elif kind == "int":
        ok = np.issubdtype(dt, np.integer)
    else:
        ok = np.issubdtype(dt, np.floating)
    if not ok:
        raise CacheContractError(f"{path}: {name} holds {dt} values, expected {_KINDS[kind]}; {REEXTRACT}")


def check_rows(path, ds, name: str, n: int) -> None:
    """Row indices must be integers in [0, n) without repeats (they index the split's image list)."""
    check_dtype(path, ds, name, "int")
    rows = np.asarray(ds[()], dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise CacheContractError(f"{path}: {name} has indices outside [0, {n}) (the split's {n} images; found "
                                 f"{int(rows.min())}..{int(rows.max())}); {REEXTRACT}")
    if rows.size > 1 and not (np.diff(rows) > 0).all() and np.unique(rows).size != rows.size:  # sorted: O(n)
        raise CacheContractError(f"{path}: {name} repeats row indices; {REEXTRACT}")
