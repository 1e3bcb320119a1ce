"""What a schema-v1 cache is called and where things live in it: names, constants, identity.

Everything here is shared by the reader, the validation, the writers and the resume machinery.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import h5py

from featbench.version import __version__

SCHEMA_VERSION = 1
#: augmented-view sets of the train split, each [V, K, D] over the same view_rows (attr ``scale``)
VIEW_SET_NAMES = ("views", "views_2", "views_3", "views_4")
SPLITS = ("train", "val", "test")
REQUIRED_ATTRS = ("featbench_schema", "model", "pretrained", "dataset", "embed_dim", "logit_scale", "fingerprint")
#: the group of a partial file that records which blocks are done (never part of a finished cache)
PROGRESS_GROUP = "_progress"
PARTIAL_SUFFIX = ".partial"
#: how every string dataset (class names, paths, skipped) is stored
STRING_DTYPE = h5py.string_dtype(encoding="utf-8")


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


def partial_path(path: str | os.PathLike) -> Path:
    """The resumable work-in-progress file next to a cache: <name>.h5.partial."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def utc_now() -> str:
    """The `created` stamp: ISO-8601 UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        "created": utc_now(),
    }
    for k, v in extra.items():
        attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return attrs


def decode(value):
    """An HDF5 attribute as Python: bytes become str (h5py returns either, by how it was written)."""
    return value.decode() if isinstance(value, bytes) else value


def json_attr(attrs, key: str, default: str = "{}"):
    """A JSON-encoded attribute, parsed; None when it does not parse (callers pick their fallback)."""
    try:
        return json.loads(decode(attrs.get(key, default)))
    except (ValueError, TypeError):
        return None


def read_strings(ds) -> list[str]:
    """A string dataset as a list of str."""
    return [s for s in ds.asstr()[()]]
