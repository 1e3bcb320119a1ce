"""One extraction request as a frozen, validated value: `ExtractSpec`.

The CLI (`featbench extract`), recipes (`featbench run`), torchrun ranks and the library call
`featbench.extract.extract` all build an `ExtractSpec`; its constructor checks every field once, with one
error line naming the flag and the fix, and the pipeline below (`featbench.extract.run_extract`) trusts it.
Cheap to import: no torch, no h5py.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from featbench.datasets.base import CLASSNAME_STYLES
from featbench.datasets.catalog import dataset_info, list_datasets, resolve_name
from featbench.devices import check_device, may_use_cuda
from featbench.encoders import DEFAULT_VIEW_SCALE
from featbench.errors import FeatbenchError
from featbench.heads import get_head_class
from featbench.prompts import check_template

STANDARD_SHOTS = (1, 2, 4, 8, 16)
SPLIT_NAMES = ("train", "val", "test")
TRAIN_ROWS = ("all", "fewshot")
DTYPES = ("float16", "float32")


# ----------------------------------------------------------------------------------------------------
# argument helpers (shared with the CLI)
# ----------------------------------------------------------------------------------------------------
def expand_view_shots(shots: int | Sequence[int]) -> tuple[int, ...]:
    """A single K means every standard shot count <= K plus K itself; a list is taken as given."""
    if isinstance(shots, int):
        shots = [shots]
    shots = [int(s) for s in shots]
    if any(s < 1 for s in shots):
        raise FeatbenchError(f"--view-shots must be positive integers, got {shots}")
    if len(shots) == 1:
        k = shots[0]
        return tuple(sorted({s for s in STANDARD_SHOTS if s <= k} | {k}))
    return tuple(sorted(set(shots)))


def parse_view_scale(value) -> tuple[float, float]:
    """'0.5,1' -> (0.5, 1.0), validated (0 < lo <= hi <= 1)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    else:
        parts = list(value)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise FeatbenchError(f"--view-scale expects two numbers like 0.5,1 (min and max crop area fraction); got {value!r}") from None
    if not (0 < lo <= hi <= 1):
        raise FeatbenchError(f"--view-scale {lo},{hi}: need 0 < min <= max <= 1")
    return lo, hi


def parse_view_scales(value) -> tuple[tuple[float, float], ...]:
    """'0.5,1:0.08,1' (or a list of pairs) -> ((0.5, 1.0), (0.08, 1.0)): one view set per crop scale, in order;
    the first is stored as /splits/train/views, the others as views_2, views_3, views_4."""
    from featbench.cache import VIEW_SET_NAMES  # lazy: featbench.cache imports h5py

    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(":") if p]
    else:
        parts = list(value)
    scales = tuple(parse_view_scale(p) for p in parts)
    if not scales:
        raise FeatbenchError(f"--view-scales expects crop scales like 0.5,1:0.08,1; got {value!r}")
    if len(set(scales)) != len(scales):
        raise FeatbenchError(f"--view-scales {value!r}: each scale once")
    if len(scales) > len(VIEW_SET_NAMES):
        raise FeatbenchError(f"--view-scales: at most {len(VIEW_SET_NAMES)} view sets (got {len(scales)})")
    return scales


def heads_view_scales(heads: Sequence[str]) -> tuple[tuple[float, float], ...]:
    """The crop scales the heads' papers train their views on (``paper_view_scale``), each once: the view sets
    an extraction for these heads needs so that every head reproduces its own paper's procedure.

    Ordered widest lower bound first, so (0.5, 1) stays the first set (/splits/train/views) and a cache made
    for Tip-Adapter and TaskRes keeps the identity of one made with ``--view-scales 0.5,1:0.08,1``. Heads
    that use no views, or declare no scale, add none; with none at all the default (0.5, 1) set is kept.
    """
    declared = set()
    for head in heads:
        cls = get_head_class(head)  # an unknown name: one line with the closest names
        if cls.uses_views and cls.paper_view_scale is not None:
            declared.add(tuple(float(v) for v in cls.paper_view_scale))
    return tuple(sorted(declared, key=lambda sc: (-sc[0], -sc[1]))) or (DEFAULT_VIEW_SCALE,)


def dataset_name(dataset: str, name: str | None) -> str:
    """The name a cache records: the catalog name, or for custom datasets (folder, csv) the required --name.

    Two custom datasets encoded by one model would otherwise share a cache path and result rows.
    """
    canonical = _catalog_name(dataset)
    if dataset_info(canonical).group != "custom":
        if name is not None and name != canonical:
            raise FeatbenchError(f"--name only applies to custom datasets (folder, csv); {canonical} is always named {canonical}")
        return canonical
    if not name:
        raise FeatbenchError(f"--dataset {canonical} needs --name NAME (e.g. --name my-birds) so its cache path and result "
                             f"rows are distinct from other custom datasets'")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise FeatbenchError(f"--name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' (it names the cache file)")
    if name in list_datasets():
        raise FeatbenchError(f"--name {name}: that is a catalog dataset's name; pick a name of your own")
    return name


def _catalog_name(dataset: str) -> str:
    """The catalog's name for --dataset, or one line with the closest name (--dataset dtdd: did you mean dtd?)."""
    try:
        return resolve_name(dataset)
    except FeatbenchError as err:
        close = difflib.get_close_matches(str(dataset).lower(), list_datasets(), n=1)
        if not close:
            raise
        raise FeatbenchError(f"--dataset {str(dataset)[:80]}: did you mean '{close[0]}'? ({err})") from None


def _int(value, flag: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FeatbenchError(f"{flag} {value!r}: expected an integer") from None


def _templates(value):
    """A templates file stays a path (read when the dataset loads); a list is checked here, once."""
    if value is None or isinstance(value, (str, Path)):
        return value
    return tuple(check_template(t, "--templates") for t in value)


def _classnames(value):
    """A class-names file stays a path (read against the dataset's classes); a list becomes strings."""
    if value is None or isinstance(value, (str, Path)):
        return value
    return tuple(str(c) for c in value)


#: (batch size, DataLoader workers) when the flags are left out: on a CPU the encoder is the bottleneck, and
#: decoding in the main process keeps every core for it; a GPU encodes thousands of images a second, so
#: decoding, resizing and cropping move to up to 16 worker processes and a batch fills the GPU
CPU_DEFAULTS = (64, 0)
GPU_BATCH_SIZE = 256
MAX_GPU_WORKERS = 16


def extraction_defaults(device: str, cores: int | None = None) -> tuple[int, int]:
    """(batch size, workers) for ``device`` when --batch-size / --workers are not given."""
    if not may_use_cuda(check_device(device)):
        return CPU_DEFAULTS
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return GPU_BATCH_SIZE, min(MAX_GPU_WORKERS, int(cores))


# ----------------------------------------------------------------------------------------------------
# the spec
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractSpec:
    """Everything one extraction needs, checked once in ``__post_init__`` (see `featbench.extract.extract`).

    view_scales: one view set per crop scale (the first is /splits/train/views); `from_kwargs` maps the
    single ``view_scale`` of older calls onto it. shard=(rank, world): write only rank's share of the rows.
    """

    dataset: str
    root: Any
    model: str = "RN50"
    pretrained: str = "openai"
    splits: tuple[str, ...] = ("train", "val", "test")
    views: int = 10
    view_shots: tuple[int, ...] = STANDARD_SHOTS
    seeds: tuple[int, ...] = (1, 2, 3)
    train_rows: str = "all"
    all_views: bool = False
    batch_size: int | None = None  # None: the device's default (extraction_defaults)
    workers: int | None = None
    device: str = "auto"
    dtype: str = "float16"
    cache_dir: Path = Path("cache")
    out: Path | None = None
    overwrite: bool = False
    skip_bad_images: bool = False
    manifest: Path | None = None
    classname_style: str = "clean"
    view_scales: tuple[tuple[float, float], ...] = (DEFAULT_VIEW_SCALE,)
    pre_projection: bool = False
    templates: str | Path | tuple[str, ...] | None = None
    classnames: str | Path | tuple[str, ...] | None = None
    progress: bool = True
    view_seed: int = 0
    name: str | None = None
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        dataset_name(self.dataset, self.name)  # --dataset known, --name given exactly when it must be
        self._set("splits", self._checked_splits())
        self._check_choice("train_rows", "--train-rows", TRAIN_ROWS, "all or fewshot")
        self._check_choice("dtype", "--dtype", DTYPES, "float16 or float32")
        self._check_counts()
        self._check_choice("classname_style", "--classname-style", CLASSNAME_STYLES, "clean or raw")
        seeds = tuple(_int(s, "--seeds") for s in self.seeds)
        if not seeds:
            raise FeatbenchError("--seeds is empty; give comma-separated integers like 1,2,3")
        self._set("seeds", seeds)
        self._set("view_shots", expand_view_shots(self.view_shots))
        self._set("view_scales", parse_view_scales(self.view_scales))
        self._set("device", check_device(self.device))
        self._set("shard", self._checked_shard())
        self._set_paths()
        for key in ("all_views", "overwrite", "skip_bad_images", "pre_projection", "progress"):
            self._set(key, bool(getattr(self, key)))
        self._set("view_seed", _int(self.view_seed, "view_seed"))
        self._set("templates", _templates(self.templates))
        self._set("classnames", _classnames(self.classnames))

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_kwargs(cls, dataset: str, root, *, view_scale=DEFAULT_VIEW_SCALE, view_scales=None, **kw) -> "ExtractSpec":
        """The spec of `featbench.extract.extract`'s keywords: ``view_scales`` (several) replaces ``view_scale``."""
        scales = view_scales if view_scales is not None else (view_scale,)
        return cls(dataset=dataset, root=root, view_scales=scales, **kw)

    @classmethod
    def from_cli(cls, *, no_progress: bool, **flags) -> "ExtractSpec":
        """The spec of `featbench extract`'s flags (comma lists already split): choices are case-insensitive."""
        for key in ("train_rows", "dtype", "classname_style"):
            flags[key] = str(flags[key]).strip().lower()
        return cls.from_kwargs(progress=not no_progress, **flags)

    def replace(self, **changes) -> "ExtractSpec":
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def cache_name(self) -> str:
        """The dataset name the cache records and is filed under."""
        return dataset_name(self.dataset, self.name)

    @property
    def feature_block(self) -> int:
        """Images per block of plain features (what one encoder batch holds)."""
        return self.batch_size

    def view_block(self, views: int) -> int:
        """Train rows per block of augmented views (so a block holds about one batch of images)."""
        return max(1, self.batch_size // max(views, 1))

    @property
    def shard_label(self) -> str | None:
        """A shard's identity: its rows depend on the batch size, since shards are cut on block boundaries."""
        if self.shard is None:
            return None
        return f"{self.shard[0]}/{self.shard[1]} batch {self.batch_size}"

    # -- checks ----------------------------------------------------------------------------------------
    def _set(self, key: str, value) -> None:
        object.__setattr__(self, key, value)  # normalising a frozen dataclass in its own constructor

    def _check_choice(self, key: str, flag: str, allowed: tuple[str, ...], words: str) -> None:
        value = getattr(self, key)
        if value not in allowed:
            raise FeatbenchError(f"{flag} {value}: expected {words}")

    def _checked_splits(self) -> tuple[str, ...]:
        splits = tuple(self.splits)
        if not splits or any(s not in SPLIT_NAMES for s in splits):
            raise FeatbenchError(f"--splits: expected a comma list of train,val,test; got {','.join(splits) or 'nothing'}")
        return splits

    def _check_counts(self) -> None:
        if self.batch_size is None or self.workers is None:
            batch, workers = extraction_defaults(self.device)
            self._set("batch_size", batch if self.batch_size is None else self.batch_size)
            self._set("workers", workers if self.workers is None else self.workers)
        views, batch, workers = (_int(self.views, "--views"), _int(self.batch_size, "--batch-size"),
                                 _int(self.workers, "--workers"))
        if views < 0:
            raise FeatbenchError(f"--views {views}: expected 0 (no views) or a positive number")
        if batch < 1:
            raise FeatbenchError(f"--batch-size {batch}: expected a positive integer")
        if workers < 0:
            raise FeatbenchError(f"--workers {workers}: expected 0 or more")
        self._set("views", views)
        self._set("batch_size", batch)
        self._set("workers", workers)

    def _checked_shard(self) -> tuple[int, int] | None:
        if self.shard is None:
            return None
        rank, world = (_int(v, "shard") for v in self.shard)
        if world < 1 or not 0 <= rank < world:
            raise FeatbenchError(f"shard {rank} of {world} is not a valid shard (need 0 <= rank < world)")
        return rank, world

    def _set_paths(self) -> None:
        self._set("cache_dir", Path(self.cache_dir))
        self._set("out", Path(self.out) if self.out else None)
        self._set("manifest", None if self.manifest is None else Path(self.manifest))


__all__ = ["ExtractSpec", "extraction_defaults", "dataset_name", "heads_view_scales", "expand_view_shots",
           "parse_view_scale", "parse_view_scales", "STANDARD_SHOTS",
           "SPLIT_NAMES", "TRAIN_ROWS", "DTYPES", "CLASSNAME_STYLES"]
