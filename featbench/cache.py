"""The HDF5 feature cache — schema version 1, a documented contract.

This is the only module that imports h5py. Layout (D = embedding width, C = classes, T = templates)::

    / attrs: featbench_schema=1, featbench_version, model, pretrained, dataset, embed_dim,
             logit_scale (float, already exponentiated: 100 for OpenAI CLIP), fingerprint (sha256 hex),
             preprocess (json), created (ISO-8601 UTC)
    /classnames                  [C] utf-8
    /text/features               [T, C, D] raw text-encoder outputs per template; attr templates (json list)
    /splits/<split>/paths        [N] utf-8, relative to the dataset root: the full split index
    /splits/<split>/labels       [N] int64
    /splits/<split>/features     [M, D] raw image features (test transform) of the rows in `rows`
    /splits/<split>/rows         [M] int64 indices into the split index; absent means all rows (M = N)
    /splits/train/views          [V, K, D] augmented-view features of the train rows in view_rows
    /splits/train/view_rows      [K] int64 indices into the train split index
    /splits/train/views_2 ...    further view sets over the same view_rows (extract --view-scales), each
                                 with attr scale [min, max] (RandomResizedCrop area), as /splits/train/views

Optional, additive (pre-projection features, written by `extract --pre-projection`)::

    /splits/<split>/features_pre [M, P]  /splits/train/views_pre [V, K, P]
    /model/image_projection [P, D] (+ /model/image_projection_bias [D])
    /text/features_pre [T, C, Q]  /model/text_projection [Q, D]

Written by `featbench extract` as well (additive)::

    / attrs: extraction (json: the content-defining arguments — splits, views, view_shots, seeds,
             train_rows, all_views, dtype, pre_projection, hashes of the split index and class names),
             checkpoint_sha256 (local checkpoint files), shard ("rank/world batch B", part files only)
    /skipped                     [S] utf-8 relative paths of unreadable images (--skip-bad-images)
    / attrs: text_tower (json: how prompt learners rebuild the text tower that made the cache — model
             config, weights source, tensor sha256; see featbench.texttower)
    /model/text_tower_state      [P] float32, the text tower's tensors when the weights are random (--pretrained none)

`CacheWriter` builds a cache incrementally in `<name>.h5.partial` (preallocated chunks, per-block done
flags under /_progress, removed at the end) and renames it into place: resumable after `kill -9`.
When unreadable images are dropped, the compacted cache is written to a new `<name>.h5.tmp` and renamed
into place before the (untouched) partial is deleted.

Features are stored raw (not normalised): every head normalises the way its paper does. Readers
return float32 whatever the on-disk dtype. Anyone may write such a file (users bring features from
their own encoders); `Cache` validates the contract on open and names what is missing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from featbench.version import __version__
from featbench.errors import CacheContractError, FingerprintMismatch, FeatbenchError

SCHEMA_VERSION = 1
#: augmented-view sets of the train split, each [V, K, D] over the same view_rows (attr ``scale``)
VIEW_SET_NAMES = ("views", "views_2", "views_3", "views_4")
SPLITS = ("train", "val", "test")
REQUIRED_ATTRS = ("featbench_schema", "model", "pretrained", "dataset", "embed_dim", "logit_scale", "fingerprint")
_STR = h5py.string_dtype(encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# identity
# ----------------------------------------------------------------------------------------------------
def compute_fingerprint(model: str, pretrained: str, preprocess: Mapping, checkpoint_sha256: str | None = None) -> str:
    """sha256 over everything that changes the numbers a cache holds: model, weights, preprocessing."""
    payload = {
        "model": model,
        "pretrained": pretrained,
        "checkpoint_sha256": checkpoint_sha256 or "",
        "preprocess": preprocess,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def safe_name(name: str) -> str:
    """A filesystem-safe version of a model/pretrained/dataset name (keeps letters, digits, - _ .)."""
    out = "".join(ch if (ch.isalnum() or ch in "-_.") else "_" for ch in str(name))
    return out.strip("._") or "unnamed"


def default_cache_path(cache_dir: str | os.PathLike, model: str, pretrained: str, dataset: str) -> Path:
    """cache/<model>--<pretrained>/<dataset>.h5, each part made filesystem-safe."""
    model_part = safe_name(Path(model).stem if str(model).endswith(".json") else model)
    pre_part = safe_name(Path(pretrained).name if os.sep in str(pretrained) else pretrained)
    return Path(cache_dir) / f"{model_part}--{pre_part}" / f"{safe_name(dataset)}.h5"


def check_same_encoder(a: "Cache", b: "Cache") -> None:
    """Refuse to combine caches made by different encoders or preprocessing."""
    if a.fingerprint != b.fingerprint:
        raise FingerprintMismatch(
            f"caches {a.path} and {b.path} were built by different encoders, preprocessing, prompt templates or "
            f"class-name styles "
            f"({a.model}/{a.pretrained}, fingerprint {a.fingerprint[:12]} vs {b.model}/{b.pretrained}, "
            f"fingerprint {b.fingerprint[:12]}); extract both with the same --model/--pretrained/--classname-style "
            f"and dataset templates"
        )


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitIndex:
    """The full index of one split: relative paths and integer labels of every row."""

    paths: list[str]
    labels: np.ndarray


def _read_strings(ds) -> list[str]:
    return [s for s in ds.asstr()[()]]


class Cache:
    """Lazy, validated reader of a schema-v1 cache file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FeatbenchError(f"cache file {self.path} does not exist; run `featbench extract` first or check the path")
        if self.path.is_dir():
            raise FeatbenchError(f"{self.path} is a folder, not a cache file; pass a .h5 cache (`featbench ls {self.path}` lists them)")
        if not self.path.is_file():
            raise FeatbenchError(f"{self.path} is not a regular file; pass a .h5 cache file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
            raise CacheContractError(f"{self.path} is not a readable HDF5 file ({reason}); rebuild it with `featbench extract --overwrite`") from None
        try:
            self._validate()
        except Exception:
            self._f.close()
            raise

    # -- context manager ----------------------------------------------------------------------------
    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._f.close()
        except Exception:  # pragma: no cover - closing twice is harmless
            pass

    # -- validation ----------------------------------------------------------------------------------
    def _missing(self, what: str) -> CacheContractError:
        return CacheContractError(f"{self.path}: missing {what} (required by the featbench schema-v1 cache contract)")

    def _validate(self) -> None:
        f = self._f
        for key in REQUIRED_ATTRS:
            if key not in f.attrs:
                raise self._missing(f"root attribute '{key}'")
        _check_attr_types(self.path, f.attrs)
        schema = int(f.attrs["featbench_schema"])
        if schema != SCHEMA_VERSION:
            raise CacheContractError(f"{self.path}: featbench_schema={schema}, this featbench reads schema {SCHEMA_VERSION}")
        if "classnames" not in f:
            raise self._missing("dataset /classnames")
        if "splits" not in f or not any(s in f["splits"] for s in SPLITS):
            raise self._missing("group /splits/<train|val|test>")
        d = self.embed_dim
        n_classes = int(f["classnames"].shape[0])
        for split in self.splits:
            g = f["splits"][split]
            for name in ("paths", "labels", "features"):
                if name not in g:
                    raise self._missing(f"/splits/{split}/{name}")
            for name, kind in (("paths", "str"), ("labels", "int"), ("features", "float")):
                _check_dtype(self.path, g[name], f"/splits/{split}/{name}", kind)
            n = g["paths"].shape[0]
            if g["labels"].shape != (n,):
                raise CacheContractError(f"{self.path}: /splits/{split}/labels has shape {g['labels'].shape}, expected ({n},) like paths")
            feats = g["features"]
            if feats.ndim != 2 or feats.shape[1] != d:
                raise CacheContractError(f"{self.path}: /splits/{split}/features has shape {feats.shape}, expected [M, {d}] (embed_dim)")
            m = feats.shape[0]
            if "rows" in g:
                if g["rows"].shape != (m,):
                    raise CacheContractError(f"{self.path}: /splits/{split}/rows has shape {g['rows'].shape}, expected ({m},) like features")
                _check_rows(self.path, g["rows"], f"/splits/{split}/rows", n)
            elif m != n:
                raise CacheContractError(
                    f"{self.path}: /splits/{split}/features has {m} rows but the split index has {n}; add /splits/{split}/rows"
                )
            if n:
                labels = g["labels"][()]
                if labels.min() < 0 or labels.max() >= n_classes:
                    raise CacheContractError(f"{self.path}: /splits/{split}/labels outside [0, {n_classes}) (the number of classnames)")
        _check_dtype(self.path, f["classnames"], "/classnames", "str")
        if "text" in f and "features" in f["text"]:
            t = f["text"]["features"]
            _check_dtype(self.path, t, "/text/features", "float")
            if t.ndim != 3 or t.shape[1] != n_classes or t.shape[2] != d:
                raise CacheContractError(f"{self.path}: /text/features has shape {t.shape}, expected [T, {n_classes}, {d}]")
        if "train" in f["splits"] and "views" in f["splits"]["train"]:
            g = f["splits"]["train"]
            if "view_rows" not in g:
                raise self._missing("/splits/train/view_rows (needed with /splits/train/views)")
            _check_rows(self.path, g["view_rows"], "/splits/train/view_rows", g["paths"].shape[0])
            for name in VIEW_SET_NAMES:
                if name not in g:
                    continue
                v = g[name]
                _check_dtype(self.path, v, f"/splits/train/{name}", "float")
                if v.ndim != 3 or v.shape[1] != g["view_rows"].shape[0] or v.shape[2] != d:
                    raise CacheContractError(f"{self.path}: /splits/train/{name} has shape {v.shape}, expected [V, K={g['view_rows'].shape[0]}, {d}]")

    # -- metadata ------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        out = {}
        for k, v in self._f.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        return out

    def _attr(self, key: str):
        v = self._f.attrs[key]
        return v.decode() if isinstance(v, bytes) else v

    @property
    def model(self) -> str:
        return str(self._attr("model"))

    @property
    def pretrained(self) -> str:
        return str(self._attr("pretrained"))

    @property
    def dataset(self) -> str:
        return str(self._attr("dataset"))

    @property
    def fingerprint(self) -> str:
        return str(self._attr("fingerprint"))

    @property
    def content_id(self) -> str:
        """16 hex digits of sha256 over the dataset name, class names and every split's index (paths, labels).

        Part of every result row's identity: two caches of different custom datasets encoded by one model
        share a fingerprint, never a content id. Computed once per open file (about a second for ImageNet).
        """
        cached = getattr(self, "_content_id", None)
        if cached is None:
            import hashlib

            h = hashlib.sha256()
            h.update(json.dumps([self.dataset, self.classnames]).encode())
            for split in self.splits:
                h.update(f"\0{split}\0".encode())
                h.update("\n".join(self.paths(split)).encode())
                h.update(self.labels(split).astype("<i8").tobytes())
            cached = self._content_id = h.hexdigest()[:16]
        return cached

    @property
    def embed_dim(self) -> int:
        return int(self._attr("embed_dim"))

    @property
    def logit_scale(self) -> float:
        return float(self._attr("logit_scale"))  # finite and > 0: checked on open

    @property
    def preprocess(self) -> dict:
        raw = self._f.attrs.get("preprocess", "{}")
        try:
            out = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except (ValueError, TypeError):
            return {}
        return out if isinstance(out, dict) else {}

    @property
    def nonfinite(self) -> list[str] | None:
        """Datasets that held NaN/Inf when the cache was written (attr `nonfinite`); None: not recorded."""
        raw = self._f.attrs.get("nonfinite")
        if raw is None:
            return None
        try:
            out = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except (ValueError, TypeError):
            return None
        return [str(x) for x in out] if isinstance(out, list) else None

    def _finite(self, arr: np.ndarray, what: str) -> np.ndarray:
        """Refuse NaN/Inf in what a fit reads: such values silently become plausible-looking results."""
        return require_finite(arr, f"{self.path}: {what}")

    @property
    def extraction(self) -> dict:
        """The content-defining extraction arguments (views, shots, seeds, rows...) when extract wrote it."""
        raw = self._f.attrs.get("extraction", "{}")
        try:
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except ValueError:
            return {}

    @property
    def classnames(self) -> list[str]:
        return _read_strings(self._f["classnames"])

    @property
    def num_classes(self) -> int:
        return int(self._f["classnames"].shape[0])

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self._f["splits"]]

    def has_split(self, split: str) -> bool:
        return split in self._f["splits"]

    def _split(self, split: str):
        if split not in self._f["splits"]:
            raise self._missing(f"/splits/{split}")
        return self._f["splits"][split]

    # -- text ----------------------------------------------------------------------------------------
    @property
    def has_text(self) -> bool:
        return "text" in self._f and "features" in self._f["text"]

    def text_features(self) -> np.ndarray:
        """[T, C, D] raw text-encoder outputs, float32."""
        if not self.has_text:
            raise self._missing("/text/features (class-prompt text embeddings)")
        return self._finite(np.asarray(self._f["text"]["features"][()], dtype=np.float32), "/text/features")

    @property
    def templates(self) -> list[str]:
        if not self.has_text:
            return []
        raw = self._f["text"]["features"].attrs.get("templates", "[]")
        try:
            out = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except (ValueError, TypeError):
            return []
        return [str(t) for t in out] if isinstance(out, list) else []

    # -- image features ------------------------------------------------------------------------------
    def index(self, split: str) -> SplitIndex:
        g = self._split(split)
        return SplitIndex(paths=_read_strings(g["paths"]), labels=np.asarray(g["labels"][()], dtype=np.int64))

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self._split(split)["labels"][()], dtype=np.int64)

    def paths(self, split: str) -> list[str]:
        return _read_strings(self._split(split)["paths"])

    def feature_rows(self, split: str) -> np.ndarray:
        """Row indices (into the split index) that have features, in storage order."""
        g = self._split(split)
        if "rows" in g:
            return np.asarray(g["rows"][()], dtype=np.int64)
        return np.arange(g["paths"].shape[0], dtype=np.int64)

    def features(self, split: str, rows: Sequence[int] | np.ndarray | None = None, kind: str = "features") -> np.ndarray:
        """Float32 features of the given split rows (all covered rows, in storage order, when rows is None).

        kind="features_pre" reads the pre-projection features instead.
        """
        g = self._split(split)
        if kind not in g:
            raise self._missing(f"/splits/{split}/{kind}" + (" (extract with --pre-projection)" if kind.endswith("_pre") else ""))
        ds = g[kind]
        if rows is None:
            return self._finite(np.asarray(ds[()], dtype=np.float32), f"/splits/{split}/{kind}")
        pos = self._positions(self.feature_rows(split), rows, f"/splits/{split}/{kind}")
        return self._finite(_take(ds, pos), f"/splits/{split}/{kind}")

    def _positions(self, stored_rows: np.ndarray, wanted: Iterable[int], what: str) -> np.ndarray:
        wanted = np.asarray(list(wanted) if not isinstance(wanted, np.ndarray) else wanted, dtype=np.int64)
        lookup = {int(r): i for i, r in enumerate(stored_rows)}
        missing = [int(r) for r in wanted if int(r) not in lookup]
        if missing:
            raise CacheContractError(
                f"{self.path}: {what} has no features for {len(missing)} requested row(s) (e.g. row {missing[0]}); "
                "re-extract with --train-rows all or with the shots/seeds you are fitting"
            )
        return np.asarray([lookup[int(r)] for r in wanted], dtype=np.int64)

    @property
    def has_views(self) -> bool:
        return self.has_split("train") and "views" in self._f["splits"]["train"]

    @property
    def num_views(self) -> int:
        return int(self._f["splits"]["train"]["views"].shape[0]) if self.has_views else 0

    def view_rows(self) -> np.ndarray:
        if not self.has_views:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._f["splits"]["train"]["view_rows"][()], dtype=np.int64)

    def view_sets(self) -> dict[str, tuple[float, float] | None]:
        """The train split's augmented-view sets: dataset name ("views", "views_2", ...) -> crop area scale.

        The scale comes from the dataset's ``scale`` attribute, else the cache's preprocess ``view_scales``
        (one per set) or ``view_scale`` (the first set: caches from before view sets); None when unrecorded.
        """
        if not self.has_views:
            return {}
        g = self._f["splits"]["train"]
        pp = self.preprocess
        listed = pp.get("view_scales") or ([pp["view_scale"]] if pp.get("view_scale") else [])
        out: dict[str, tuple[float, float] | None] = {}
        for i, name in enumerate(VIEW_SET_NAMES):
            if name not in g:
                continue
            scale = g[name].attrs.get("scale")
            if scale is None and i < len(listed):
                scale = listed[i]
            out[name] = (float(scale[0]), float(scale[1])) if scale is not None else None
        return out

    def covers_views(self, rows: Iterable[int]) -> bool:
        have = set(int(r) for r in self.view_rows())
        return all(int(r) in have for r in rows)

    def views(self, rows: Sequence[int] | np.ndarray | None = None, kind: str = "views") -> np.ndarray:
        """[V, len(rows), D] float32 augmented-view features of the given train rows."""
        g = self._split("train")
        if kind not in g:
            raise self._missing(f"/splits/train/{kind}")
        ds = g[kind]
        if rows is None:
            return self._finite(np.asarray(ds[()], dtype=np.float32), f"/splits/train/{kind}")
        pos = self._positions(self.view_rows(), rows, f"/splits/train/{kind}")
        return self._finite(_take(ds, pos, axis=1), f"/splits/train/{kind}")

    # -- optional model tensors (pre-projection support) ---------------------------------------------
    def has_dataset(self, name: str) -> bool:
        return name in self._f

    def array(self, name: str) -> np.ndarray:
        """Any dataset by absolute name (e.g. '/model/image_projection'), float32 for float data."""
        if name not in self._f:
            raise self._missing(name)
        data = self._f[name][()]
        if np.issubdtype(np.asarray(data).dtype, np.floating):
            return self._finite(np.asarray(data, dtype=np.float32), name)
        return np.asarray(data)

    @property
    def skipped(self) -> list[str]:
        if "skipped" in self._f:
            return _read_strings(self._f["skipped"])
        return []

    def summary(self) -> dict:
        """A JSON-able description (what `featbench info --json` prints)."""
        out = {
            "path": str(self.path),
            **{k: v for k, v in self.attrs.items() if k not in ("preprocess", "extraction")},
            "preprocess": self.preprocess,
            "extraction": self.extraction,
            "num_classes": self.num_classes,
            "templates": len(self.templates),
            "has_text": self.has_text,
            "splits": {},
            "views": {"num_views": self.num_views, "rows": int(self.view_rows().shape[0]),
                      "sets": {k: (list(v) if v else None) for k, v in self.view_sets().items()}},
            "skipped": len(self.skipped),
            "nonfinite": self.nonfinite,
        }
        for s in self.splits:
            g = self._split(s)
            out["splits"][s] = {"rows": int(g["paths"].shape[0]), "with_features": int(g["features"].shape[0])}
        return out


def _take(ds, pos: np.ndarray, axis: int = 0) -> np.ndarray:
    """Gather positions (any order, repeats allowed) along axis of an h5py dataset, as float32."""
    if pos.size == 0:
        shape = list(ds.shape)
        shape[axis] = 0
        return np.zeros(shape, dtype=np.float32)
    uniq, inverse = np.unique(pos, return_inverse=True)
    if uniq.size * 4 >= ds.shape[axis]:  # dense request: one contiguous read beats h5py fancy indexing
        return np.take(ds[()], pos, axis=axis).astype(np.float32)  # convert after the gather: less memory
    block = ds[uniq.tolist()] if axis == 0 else ds[:, uniq.tolist()]
    return np.take(np.asarray(block, dtype=np.float32), inverse.reshape(-1), axis=axis)


# ----------------------------------------------------------------------------------------------------
# validation helpers: wrong types, out-of-range row indices and NaN/Inf are one clear line, not a traceback
# ----------------------------------------------------------------------------------------------------
REEXTRACT = "re-extract the cache (`featbench extract --overwrite`) or re-import the features"


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


def _check_attr_types(path, attrs) -> None:
    def bad(key: str, want: str) -> CacheContractError:
        value = attrs[key]
        text = repr(value.decode() if isinstance(value, bytes) else value)
        text = text if len(text) <= 60 else text[:57] + "..."
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


def _check_dtype(path, ds, name: str, kind: str) -> None:
    dt = ds.dtype
    if kind == "str":
        ok = h5py.check_string_dtype(dt) is not None
        want = "UTF-8 strings"
    elif kind == "int":
        ok = np.issubdtype(dt, np.integer)
        want = "integers"
    else:
        ok = np.issubdtype(dt, np.floating)
        want = "floating-point numbers"
    if not ok:
        raise CacheContractError(f"{path}: {name} holds {dt} values, expected {want}; {REEXTRACT}")


def _check_rows(path, ds, name: str, n: int) -> None:
    """Row indices must be integers in [0, n) without repeats (they index the split's image list)."""
    _check_dtype(path, ds, name, "int")
    rows = np.asarray(ds[()], dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise CacheContractError(f"{path}: {name} has indices outside [0, {n}) (the split's {n} images; found "
                                 f"{int(rows.min())}..{int(rows.max())}); {REEXTRACT}")
    if rows.size > 1 and not (np.diff(rows) > 0).all() and np.unique(rows).size != rows.size:  # sorted: O(n)
        raise CacheContractError(f"{path}: {name} repeats row indices; {REEXTRACT}")


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
# writing a whole cache at once (tests, fixtures, merges, users converting their own features)
# ----------------------------------------------------------------------------------------------------
def _chunks(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if not shape or 0 in shape:
        return None
    if len(shape) == 2:
        return (min(shape[0], 1024), shape[1])
    if len(shape) == 3:
        return (1, min(shape[1], 1024), shape[2])
    return None


def write_array(group, name: str, data, dtype) -> None:
    data = np.asarray(data)
    group.create_dataset(name, data=data.astype(dtype), chunks=_chunks(data.shape))


def write_strings(group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=_STR)


def base_attrs(*, model: str, pretrained: str, dataset: str, embed_dim: int, logit_scale: float,
               fingerprint: str, preprocess: Mapping | None = None, **extra) -> dict:
    """The root attributes of a schema-v1 cache."""
    attrs = {
        "featbench_schema": SCHEMA_VERSION,
        "featbench_version": __version__,
        "model": str(model),
        "pretrained": str(pretrained),
        "dataset": str(dataset),
        "embed_dim": int(embed_dim),
        "logit_scale": float(logit_scale),
        "fingerprint": str(fingerprint),
        "preprocess": json.dumps(dict(preprocess or {}), sort_keys=True),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for k, v in extra.items():
        attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return attrs


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
    """Write a complete schema-v1 cache atomically (temporary file, then rename).

    splits maps split name -> {"paths", "labels", "features"[, "rows"][, "features_pre"]}.
    extra maps absolute dataset names (e.g. "/model/image_projection") to arrays stored as float32.
    view_scale is the crop scale of ``views`` (attr ``scale``); more_views maps further view-set names
    ("views_2", ...) to (array [V, K, D] over the same view_rows, scale).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    with h5py.File(tmp, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        write_strings(f, "classnames", classnames)
        if text_features is not None:
            g = f.create_group("text")
            write_array(g, "features", text_features, dtype)
            g["features"].attrs["templates"] = json.dumps(list(templates or []))
        sg = f.create_group("splits")
        for name, s in splits.items():
            g = sg.create_group(name)
            write_strings(g, "paths", s["paths"])
            g.create_dataset("labels", data=np.asarray(s["labels"], dtype=np.int64))
            write_array(g, "features", s["features"], dtype)
            if s.get("rows") is not None:
                g.create_dataset("rows", data=np.asarray(s["rows"], dtype=np.int64))
            if s.get("features_pre") is not None:
                write_array(g, "features_pre", s["features_pre"], dtype)
        if views is not None:
            g = sg["train"]
            write_array(g, "views", views, dtype)
            g.create_dataset("view_rows", data=np.asarray(view_rows, dtype=np.int64))
            if view_scale is not None:
                g["views"].attrs["scale"] = np.asarray(view_scale, dtype=np.float64)
            for name, (arr, scale) in (more_views or {}).items():
                if name not in VIEW_SET_NAMES[1:]:
                    raise FeatbenchError(f"view set name {name!r}: use one of {', '.join(VIEW_SET_NAMES[1:])}")
                write_array(g, name, arr, dtype)
                g[name].attrs["scale"] = np.asarray(scale, dtype=np.float64)
        for name, arr in (extra or {}).items():
            f.create_dataset(name, data=np.asarray(arr, dtype=np.float32))
        f.attrs["nonfinite"] = json.dumps(scan_nonfinite(f))
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------
# incremental, resumable writing (what `featbench extract` uses)
# ----------------------------------------------------------------------------------------------------
PROGRESS_GROUP = "_progress"
PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """The resumable work-in-progress file next to a cache: <name>.h5.partial."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def read_identity(path: str | os.PathLike) -> tuple[str | None, dict | None]:
    """(fingerprint, extraction job) recorded in a final or partial cache; (None, None) if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            fp = f.attrs.get("fingerprint")
            job = f.attrs.get("extraction")
            fp = fp.decode() if isinstance(fp, bytes) else fp
            job = job.decode() if isinstance(job, bytes) else job
            return (str(fp) if fp is not None else None), (json.loads(job) if job else None)
    except (OSError, ValueError, KeyError):
        return None, None


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
    if fp != str(fingerprint) or job_differences(old_job, json.loads(json.dumps(dict(job), sort_keys=True, default=str))):
        return False
    partial.unlink(missing_ok=True)
    return True


def job_differences(a: Mapping | None, b: Mapping | None) -> list[str]:
    """Keys whose values differ between two extraction jobs (sorted)."""
    a, b = dict(a or {}), dict(b or {})
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


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


def _preallocate(group, name: str, shape: tuple[int, ...], dtype) -> None:
    """A chunked dataset whose chunks are all allocated now, so later writes change raw data only
    (no HDF5 metadata) — which is what makes a `kill -9` between flushes harmless."""
    chunks = _chunks(shape)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, dcpl=dcpl, fillvalue=0)


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
        self.job = json.loads(json.dumps(dict(job), sort_keys=True, default=str))
        self._f = None
        self.tasks: dict[str, BlockTask] = {}

    # -- opening -------------------------------------------------------------------------------------
    def try_resume(self, overwrite: bool = False) -> bool:
        """Open an existing partial file of the same job; False when there is none (or it was unusable)."""
        if not self.partial.exists():
            return False
        try:  # HDF5 locks a file open for writing: never delete the partial of a running extraction
            h5py.File(self.partial, "r").close()
        except BlockingIOError:
            raise FeatbenchError(
                f"{self.partial} is locked by another running extraction; wait for it to finish (or stop it), then rerun"
            ) from None
        except OSError:
            pass  # unreadable: handled below
        if overwrite:
            self.partial.unlink()
            return False
        fp, job = read_identity(self.partial)
        if fp is None:
            # a partial HDF5 cannot open (damaged by a kill mid-write): start again
            self.partial.unlink()
            return False
        if fp != self.fingerprint or job_differences(job, self.job):
            what = "encoder/preprocessing (fingerprint)" if fp != self.fingerprint else "arguments " + ", ".join(job_differences(job, self.job))
            raise FingerprintMismatch(
                f"{self.partial} is a partial extraction with a different {what}; rerun with its original "
                "arguments to resume it, or pass --overwrite to start over"
            )
        try:
            f = h5py.File(self.partial, "r+")
        except BlockingIOError:
            raise FeatbenchError(
                f"{self.partial} is locked by another running extraction; wait for it to finish (or stop it), then rerun"
            ) from None
        except OSError:
            self.partial.unlink()
            return False
        old_shard = f.attrs.get("shard")
        old_shard = old_shard.decode() if isinstance(old_shard, bytes) else old_shard
        if (old_shard or None) != (self.shard or None):
            f.close()
            raise FingerprintMismatch(
                f"{self.partial} is a partial extraction of shard {old_shard or 'none'}, not {self.shard or 'none'}; "
                "rerun with the original torchrun world size and --batch-size to resume it, or pass --overwrite to start over"
            )
        if PROGRESS_GROUP not in f:
            f.close()
            self.partial.unlink()
            return False
        self._f = f
        for name, g in _iter_progress(f[PROGRESS_GROUP]):
            self.tasks[name] = BlockTask(
                name=name, n=int(g.attrs["n"]), block=int(g.attrs["block"]),
                targets=tuple(json.loads(g.attrs["targets"])), axis=int(g.attrs["axis"]),
            )
        # a partial that an older featbench was compacting in place when it was killed: drop its scratch
        # copies (`<name>__compact`); if a target was already replaced or removed, start again
        for t in self.tasks.values():
            for name in t.targets:
                scratch = name + "__compact"
                if scratch in f:
                    del f[scratch]
            if any(name not in f or len(f[name].shape) <= t.axis or f[name].shape[t.axis] != t.n for name in t.targets):
                self.close()
                self.tasks = {}
                self.partial.unlink()
                return False
        return True

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
        init = self.partial.with_name(self.partial.name + ".init")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if init.exists():
                init.unlink()
            fh = h5py.File(init, "w")
        except OSError as err:
            raise FeatbenchError(
                f"cannot write {init} ({err.strerror or err}); pass a writable --out or --cache-dir"
            ) from None
        with fh as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["fingerprint"] = self.fingerprint
            f.attrs["extraction"] = json.dumps(self.job, sort_keys=True)
            if self.shard:
                f.attrs["shard"] = self.shard
            write_strings(f, "classnames", classnames)
            if text_features is not None:
                g = f.require_group("text")
                write_array(g, "features", text_features, dtype)
                g["features"].attrs["templates"] = json.dumps(list(templates or []))
                if text_features_pre is not None:
                    write_array(g, "features_pre", text_features_pre, dtype)
            sg = f.create_group("splits")
            for name, s in splits.items():
                g = sg.create_group(name)
                write_strings(g, "paths", s["paths"])
                g.create_dataset("labels", data=np.asarray(s["labels"], dtype=np.int64))
                if s.get("rows") is not None:
                    g.create_dataset("rows", data=np.asarray(s["rows"], dtype=np.int64))
            for name, arr in (extra or {}).items():
                arr = np.asarray(arr)
                if np.issubdtype(arr.dtype, np.floating):
                    arr = arr.astype(np.float32)
                f.create_dataset(name, data=arr)
            for name, (shape, dt) in (arrays or {}).items():
                parent, _, leaf = name.strip("/").rpartition("/")
                _preallocate(f.require_group(parent) if parent else f, leaf, tuple(int(s) for s in shape), dt)
            pg = f.create_group(PROGRESS_GROUP)
            for t in tasks:
                g = pg.create_group(t.name)
                g.attrs["n"], g.attrs["block"], g.attrs["axis"] = t.n, t.block, t.axis
                g.attrs["targets"] = json.dumps(list(t.targets))
                _preallocate(g, "done", (max(t.n_blocks, 0),), np.int8)
                _preallocate(g, "bad", (t.n,), np.int8)
        os.replace(init, self.partial)
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

    def bad_positions(self, task: str) -> np.ndarray:
        return np.flatnonzero(self._f[PROGRESS_GROUP][task]["bad"][()]).astype(np.int64)

    # -- finishing -----------------------------------------------------------------------------------
    def finalize(self, *, row_sets: Mapping[str, tuple[str, str]], created: str | None = None) -> tuple[Path, list[str]]:
        """Drop bad rows, write /skipped, remove progress, stamp `created`, rename into place.

        row_sets: task name -> (row-index dataset name, split name) telling which stored row list
        (e.g. /splits/test/rows, /splits/train/view_rows) a task's positions refer to.
        Returns (final path, skipped relative paths).

        Without bad rows the partial itself becomes the cache. With bad rows the cache is written to a
        new file (`<final>.tmp`: every group, dataset and attribute of the partial but the progress,
        with the bad positions dropped) that is renamed into place before the partial is deleted. The
        partial is only read until then, so a kill at any moment leaves either the complete partial
        (a rerun finalises it again) or the final cache — and no space is wasted on dropped rows.
        """
        f = self._f
        for name, t in self.tasks.items():
            if self.pending_blocks(name):
                raise FeatbenchError(f"{self.partial}: task {name} is not finished; cannot finalise")
        found: dict[str, tuple[int, int]] = {}
        drops: list[tuple[BlockTask, np.ndarray, str, np.ndarray]] = []  # (task, kept positions, rows name, kept rows)
        for name, t in self.tasks.items():
            bad = self.bad_positions(name)
            if not bad.size:
                continue
            rows_name, split = row_sets[name]
            g = f["splits"][split]
            n_index = g["paths"].shape[0]
            stored = np.asarray(f[rows_name][()], dtype=np.int64) if rows_name in f else np.arange(n_index, dtype=np.int64)
            paths = _read_strings(g["paths"])
            key = SPLITS.index(split) if split in SPLITS else len(SPLITS)
            for r in stored[bad]:
                p = paths[int(r)]
                found[p] = min(found.get(p, (key, int(r))), (key, int(r)))
            keep = np.setdiff1d(np.arange(t.n, dtype=np.int64), bad)
            drops.append((t, keep, rows_name, stored[keep]))
        skipped = sorted(found, key=lambda p: found[p])  # canonical: split order, then row
        stamp = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if not drops:  # nothing to drop: the partial is the cache
            del f[PROGRESS_GROUP]
            f.attrs["nonfinite"] = json.dumps(scan_nonfinite(f))
            f.attrs["created"] = stamp
            f.flush()
            f.close()
            self._f = None
            os.replace(self.partial, self.path)
            return self.path, skipped
        # the partial stays open (and locked) but is only read from here on
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            if tmp.exists():
                tmp.unlink()
            dst = h5py.File(tmp, "w")
        except OSError as err:
            raise FeatbenchError(f"cannot write {tmp} ({err.strerror or err}); pass a writable --out or --cache-dir") from None
        try:
            with dst:
                _write_compacted(f, dst, drops, skipped, stamp)
                dst.attrs["nonfinite"] = json.dumps(scan_nonfinite(dst))
            _fsync(tmp)
            os.replace(tmp, self.path)
        except BaseException:
            try:  # a clean failure leaves no half-written file behind (after a kill the next run removes it)
                tmp.unlink(missing_ok=True)
            except OSError:  # pragma: no cover
                pass
            raise
        self.close()
        self.partial.unlink(missing_ok=True)
        return self.path, skipped

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None


def _iter_progress(group):
    """(task name, group) for every progress task; task names may contain one '/' (split/kind)."""
    for k, g in group.items():
        if "done" in g:
            yield k, g
        else:
            for k2, g2 in g.items():
                yield f"{k}/{k2}", g2


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


def _write_compacted(src, dst, drops, skipped: Sequence[str], created: str) -> None:
    """Fill the new file `dst` from the complete partial `src` (read only): everything but the progress,
    the datasets of `drops` compacted, their row-index datasets rewritten, /skipped, `created` stamped.

    Datasets and attributes are created in the order the former in-place compaction left them in:
    untouched objects first (copied whole by HDF5, storage layout included), then per task its
    compacted targets and its row-index dataset, then /skipped.
    """
    rewritten = set()
    for t, _, rows_name, _ in drops:
        rewritten.update("/" + n.strip("/") for n in t.targets)
        rewritten.add("/" + rows_name.strip("/"))
    progress = "/" + PROGRESS_GROUP

    def copy_group(sg, dg) -> None:
        _copy_attrs(sg, dg)
        for k in sg:
            obj = sg[k]
            full = obj.name
            if full == progress or full in rewritten:
                continue
            if isinstance(obj, h5py.Group):
                copy_group(obj, dg.create_group(k))
            else:
                src.copy(obj, dg, name=k)

    copy_group(src, dst)
    for t, keep, rows_name, rows in drops:
        for target in t.targets:
            _compact_into(src[target], dst, target, keep, t.axis)
        if rows_name not in dst:  # view sets share /splits/train/view_rows (the same bad images in each)
            dst.create_dataset(rows_name, data=rows)
    if skipped:
        write_strings(dst, "skipped", skipped)
    dst.attrs["created"] = created


def _compact_into(old, dst, name: str, keep: np.ndarray, axis: int, slab: int = 4096) -> None:
    """Write dataset `name` of `dst` as `old` keeping only positions `keep` along `axis` (bad images dropped)."""
    shape = list(old.shape)
    shape[axis] = int(keep.size)
    new = dst.create_dataset(name, shape=tuple(shape), dtype=old.dtype, chunks=_chunks(tuple(shape)))
    _copy_attrs(old, new)
    for s in range(0, keep.size, slab):
        idx = keep[s:s + slab]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if axis == 0:
            new[s:s + idx.size] = old[lo:hi][idx - lo]
        else:
            new[:, s:s + idx.size] = old[:, lo:hi][:, idx - lo]
