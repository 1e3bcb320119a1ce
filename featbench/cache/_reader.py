"""`Cache`: the lazy, validated reader of a schema-v1 cache file.

The class is assembled from pieces that each read in one sitting: `_CacheFile` opens and validates the
file and holds the shared error and attribute helpers; `_Metadata` reads the root attributes and class
names; `_TextArrays` and `_ImageArrays` read the text and image features. Readers return float32
whatever the on-disk dtype and refuse NaN/Inf.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import h5py
import numpy as np

from featbench.cache._schema import SPLITS, VIEW_SET_NAMES, decode, json_attr, read_strings
from featbench.cache._validate import missing, require_finite, validate_file
from featbench.errors import CacheContractError, FeatbenchError, FingerprintMismatch


@dataclass(frozen=True)
class SplitIndex:
    """The full index of one split: relative paths and integer labels of every row."""

    paths: list[str]
    labels: np.ndarray


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


def _open_hdf5(path: Path) -> h5py.File:
    """`path` opened read-only, or one line saying why it is not a cache file."""
    if not path.exists():
        raise FeatbenchError(f"cache file {path} does not exist; run `featbench extract` first or check the path")
    if path.is_dir():
        raise FeatbenchError(f"{path} is a folder, not a cache file; pass a .h5 cache (`featbench ls {path}` lists them)")
    if not path.is_file():
        raise FeatbenchError(f"{path} is not a regular file; pass a .h5 cache file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise CacheContractError(f"{path} is not a readable HDF5 file ({reason}); rebuild it with `featbench extract --overwrite`") from None


class _CacheFile:
    """An open, validated cache file, and the helpers every reader piece shares."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = _open_hdf5(self.path)
        try:
            validate_file(self.path, self._f)
        except Exception:
            self._f.close()
            raise

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._f.close()
        except Exception:  # pragma: no cover - closing twice is harmless
            pass

    def _missing(self, what: str) -> CacheContractError:
        return missing(self.path, what)

    def _finite(self, arr: np.ndarray, what: str) -> np.ndarray:
        """Refuse NaN/Inf in what a fit reads: such values silently become plausible-looking results."""
        return require_finite(arr, f"{self.path}: {what}")

    def _attr(self, key: str):
        return decode(self._f.attrs[key])

    def _split(self, split: str):
        if split not in self._f["splits"]:
            raise self._missing(f"/splits/{split}")
        return self._f["splits"][split]


class _Metadata(_CacheFile):
    """Root attributes, class names and the list of splits."""

    @property
    def attrs(self) -> dict:
        out = {}
        for k, v in self._f.attrs.items():
            out[k] = decode(v) if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
        return out

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
    def embed_dim(self) -> int:
        return int(self._attr("embed_dim"))

    @property
    def logit_scale(self) -> float:
        return float(self._attr("logit_scale"))  # finite and > 0: checked on open

    @property
    def preprocess(self) -> dict:
        out = json_attr(self._f.attrs, "preprocess")
        return out if isinstance(out, dict) else {}

    @property
    def extraction(self) -> dict:
        """The content-defining extraction arguments (views, shots, seeds, rows...) when extract wrote it."""
        out = json_attr(self._f.attrs, "extraction")
        return {} if out is None else out

    @property
    def nonfinite(self) -> list[str] | None:
        """Datasets that held NaN/Inf when the cache was written (attr `nonfinite`); None: not recorded."""
        if self._f.attrs.get("nonfinite") is None:
            return None
        out = json_attr(self._f.attrs, "nonfinite")
        return [str(x) for x in out] if isinstance(out, list) else None

    @property
    def classnames(self) -> list[str]:
        return read_strings(self._f["classnames"])

    @property
    def num_classes(self) -> int:
        return int(self._f["classnames"].shape[0])

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self._f["splits"]]

    def has_split(self, split: str) -> bool:
        return split in self._f["splits"]

    @property
    def skipped(self) -> list[str]:
        if "skipped" in self._f:
            return read_strings(self._f["skipped"])
        return []


class _TextArrays(_CacheFile):
    """The class-prompt text embeddings and their templates."""

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
        out = json_attr(self._f["text"]["features"].attrs, "templates", "[]")
        return [str(t) for t in out] if isinstance(out, list) else []


class _ImageArrays(_CacheFile):
    """Split indexes, image features of covered rows, augmented views and any other dataset by name."""

    def index(self, split: str) -> SplitIndex:
        g = self._split(split)
        return SplitIndex(paths=read_strings(g["paths"]), labels=np.asarray(g["labels"][()], dtype=np.int64))

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self._split(split)["labels"][()], dtype=np.int64)

    def paths(self, split: str) -> list[str]:
        return read_strings(self._split(split)["paths"])

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
        return self._gather(g[kind], lambda: self.feature_rows(split), rows, f"/splits/{split}/{kind}", axis=0)

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
        listed = _listed_view_scales(self.preprocess)
        if not isinstance(listed, (list, tuple)):
            raise CacheContractError(f"{self.path}: preprocess view_scales must list one [min, max] per view set; "
                                     "rebuild the cache with `featbench extract --overwrite`")
        out: dict[str, tuple[float, float] | None] = {}
        for i, name in enumerate(VIEW_SET_NAMES):
            if name not in g:
                continue
            scale = g[name].attrs.get("scale")
            if scale is None and i < len(listed):
                scale = listed[i]
            out[name] = _crop_scale(self.path, name, scale) if scale is not None else None
        return out

    def covers_views(self, rows: Iterable[int]) -> bool:
        have = set(int(r) for r in self.view_rows())
        return all(int(r) in have for r in rows)

    def views(self, rows: Sequence[int] | np.ndarray | None = None, kind: str = "views") -> np.ndarray:
        """[V, len(rows), D] float32 augmented-view features of the given train rows."""
        g = self._split("train")
        if kind not in g:
            raise self._missing(f"/splits/train/{kind}")
        return self._gather(g[kind], self.view_rows, rows, f"/splits/train/{kind}", axis=1)

    def has_dataset(self, name: str) -> bool:
        return name in self._f

    def dataset_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of a dataset by absolute name without reading it; None where the name is no dataset."""
        node = self._f.get(name)
        return tuple(int(n) for n in node.shape) if isinstance(node, h5py.Dataset) else None

    def array(self, name: str) -> np.ndarray:
        """Any dataset by absolute name (e.g. '/model/image_projection'), float32 for float data."""
        if name not in self._f:
            raise self._missing(name)
        data = self._f[name][()]
        if np.issubdtype(np.asarray(data).dtype, np.floating):
            return self._finite(np.asarray(data, dtype=np.float32), name)
        return np.asarray(data)

    def _gather(self, ds, stored_rows: Callable[[], np.ndarray], rows, what: str, axis: int) -> np.ndarray:
        """Float32 `ds` for the wanted rows (all of them when rows is None), checked finite.

        stored_rows gives the split rows in storage order along `axis` (read only when rows are given).
        """
        if rows is None:
            return self._finite(np.asarray(ds[()], dtype=np.float32), what)
        pos = _positions(self.path, stored_rows(), rows, what)
        return self._finite(_take(ds, pos, axis=axis), what)


class Cache(_Metadata, _TextArrays, _ImageArrays):
    """Lazy, validated reader of a schema-v1 cache file. Use as a context manager or call close()."""

    @property
    def content_id(self) -> str:
        """16 hex digits of sha256 over the dataset name, class names and every split's index (paths, labels).

        Part of every result row's identity: two caches of different custom datasets encoded by one model
        share a fingerprint, never a content id. Computed once per open file (about a second for ImageNet).
        """
        cached = getattr(self, "_content_id", None)
        if cached is None:
            h = hashlib.sha256()
            h.update(json.dumps([self.dataset, self.classnames]).encode())
            for split in self.splits:
                h.update(f"\0{split}\0".encode())
                h.update("\n".join(self.paths(split)).encode())
                h.update(self.labels(split).astype("<i8").tobytes())
            cached = self._content_id = h.hexdigest()[:16]
        return cached

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


def _listed_view_scales(preprocess: dict) -> list:
    """Crop scales recorded in preprocess: one per view set, or the single scale of an older cache."""
    return preprocess.get("view_scales") or ([preprocess["view_scale"]] if preprocess.get("view_scale") else [])


def _crop_scale(path, name: str, scale) -> tuple[float, float]:
    """A view set's recorded crop scale as (min, max) in (0, 1], or one line naming the set."""
    try:
        lo, hi = (float(v) for v in np.asarray(scale, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (0 < lo <= hi <= 1):
        raise CacheContractError(f"{path}: /splits/train/{name} records crop scale {str(scale)[:40]!r}, not two numbers "
                                 "0 < min <= max <= 1; rebuild the cache with `featbench extract --overwrite`")
    return lo, hi


def _positions(path, stored_rows: np.ndarray, wanted: Iterable[int], what: str) -> np.ndarray:
    """Storage positions of the wanted split rows, or one line naming a row the cache lacks."""
    wanted = np.asarray(list(wanted) if not isinstance(wanted, np.ndarray) else wanted, dtype=np.int64)
    lookup = {int(r): i for i, r in enumerate(stored_rows)}
    absent = [int(r) for r in wanted if int(r) not in lookup]
    if absent:
        raise CacheContractError(
            f"{path}: {what} has no features for {len(absent)} requested row(s) (e.g. row {absent[0]}); "
            "re-extract with --train-rows all or with the shots/seeds you are fitting"
        )
    return np.asarray([lookup[int(r)] for r in wanted], dtype=np.int64)


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
