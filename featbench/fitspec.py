"""The fit stage as one frozen value: what `featbench fit`, recipes, `featbench.fit` and the runner agree on.

A :class:`FitSpec` is built once, at the edge (the CLI, a recipe, the Python API), and checked there: the
protocol, the device spelling, shots, seeds, parallelism and the paths. The layers below take it whole and
trust it. Whether each cache can serve the grid (splits, text features, rows with features) needs the files
open and is answered by the runner's planning step, once per grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from featbench.devices import check_device
from featbench.errors import FeatbenchError, short_repr
from featbench.fewshot import check_seed

#: the selection protocols (see featbench.protocol); defined here once
PROTOCOLS = ("paper", "val", "oracle")
DEFAULT_OUT = "results/results.jsonl"
DEFAULT_MAX_CELLS = 10_000
STANDARD_SHOTS = (1, 2, 4, 8, 16)
STANDARD_SEEDS = (1, 2, 3)


def check_protocol(protocol: Any, flag: str = "--protocol") -> str:
    """One of PROTOCOLS, or one error line listing them."""
    if protocol not in PROTOCOLS:
        raise FeatbenchError(f"{flag} {short_repr(protocol, plain=True)}: choose one of {', '.join(PROTOCOLS)}")
    return protocol


def as_list(value, flag: str) -> list:
    """A comma string, one path or an iterable as a list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, os.PathLike):
        return [os.fspath(value)]
    try:
        return list(value)
    except TypeError:
        raise FeatbenchError(f"{flag} {short_repr(value)}: expected a list") from None


def _ints(values, flag: str, example: str) -> tuple[int, ...]:
    out = []
    for v in as_list(values, flag):
        if isinstance(v, bool):
            raise FeatbenchError(f"{flag} {v!r}: expected integers like {example}")
        try:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            out.append(int(v))
        except (TypeError, ValueError):
            raise FeatbenchError(f"{flag} {short_repr(v)}: expected integers like {example}") from None
    return tuple(dict.fromkeys(out))


def _paths(values, flag: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in as_list(values, flag)))


@dataclass(frozen=True)
class FitSpec:
    """Everything one `fit` needs: the grid (caches x heads x settings x shots x seeds) and how to run it.

    Parameters
    ----------
    caches : sequence of path
        Feature caches (.h5) to fit on; duplicates are dropped.
    heads : sequence of str
        Registered head names, or ``"package.module:Class"`` targets.
    shots, seeds : sequence of int
        Shots per class (>= 1) and few-shot seeds (>= 0).
    protocol : {"paper", "val", "oracle"}
        How hyperparameters are chosen (see featbench.protocol).
    sets, grids : mapping
        ``{"head.param": value}`` fixed values and ``{"head.param": [values]}`` sweeps.
    out : path
        The append-only results file.
    jobs : int
        Parallel worker processes (1: in this process).
    device : str
        auto | cpu | mps | cuda | cuda:N.
    eval_on : sequence of path
        Domain-generalisation target caches (evaluated instead of the source's test split).
    base_to_new : bool
        CoCoOp's base-to-new protocol.
    save_predictions : path or None
        A folder receiving each new row's test predictions.
    ray_address : str or None
        Run cells as Ray tasks ('local', 'auto' or a cluster address) instead of joblib.
    max_cells : int or None
        Refuse a grid of more cells (None: no limit).
    progress : bool
        Show a progress bar.
    fast : bool
        On CUDA, leave torch's faster nondeterministic kernels on (rows then say ``"deterministic": false``).
    """

    caches: tuple = ()
    heads: tuple = ()
    shots: tuple = STANDARD_SHOTS
    seeds: tuple = STANDARD_SEEDS
    protocol: str = "paper"
    sets: Mapping = field(default_factory=dict)
    grids: Mapping = field(default_factory=dict)
    out: str = DEFAULT_OUT
    jobs: int = 1
    device: str = "cpu"
    eval_on: tuple = ()
    base_to_new: bool = False
    save_predictions: str | None = None
    ray_address: str | None = None
    max_cells: int | None = DEFAULT_MAX_CELLS
    progress: bool = True
    fast: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen: normalise once)
        set_("caches", _paths(self.caches, "CACHE"))
        if not self.caches:
            raise FeatbenchError("no cache files given; pass one or more CACHE.h5 paths")
        set_("heads", tuple(dict.fromkeys(str(h).strip() for h in as_list(self.heads, "--heads") if str(h).strip())))
        if not self.heads:
            raise FeatbenchError("--heads is empty; name at least one head, e.g. --heads zeroshot,taskres")
        set_("shots", _ints(self.shots, "--shots", "1,2,4"))
        if not self.shots or any(k < 1 for k in self.shots):
            raise FeatbenchError(f"--shots {short_repr(list(self.shots))}: give positive shot counts like 1,2,4,8,16")
        set_("seeds", _ints(self.seeds, "--seeds", "1,2,3"))
        if not self.seeds:
            raise FeatbenchError("--seeds is empty; give seeds like 1,2,3")
        for s in self.seeds:
            check_seed(s)
        check_protocol(self.protocol)
        set_("device", check_device(self.device))
        self._check_running()
        self._check_paths()
        set_("sets", dict(self.sets or {}))
        set_("grids", {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in dict(self.grids or {}).items()})

    def _check_running(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise FeatbenchError(f"--jobs {short_repr(self.jobs)}: give 1 or more worker processes")
        if self.max_cells is not None and (isinstance(self.max_cells, bool) or not isinstance(self.max_cells, int)
                                           or self.max_cells < 1):
            raise FeatbenchError(f"--max-cells {short_repr(self.max_cells)}: give a positive number of cells")
        if self.ray_address is not None and self.jobs != 1:
            raise FeatbenchError("--ray and --jobs are alternatives; Ray decides parallelism from the cluster's CPUs")

    def _check_paths(self) -> None:
        for c in self.caches:
            if not os.path.exists(c):
                raise FeatbenchError(f"cache file {c} does not exist; run `featbench extract` first or check the path")
        object.__setattr__(self, "eval_on", _paths(self.eval_on, "--eval-on"))
        for t in self.eval_on:
            if not os.path.exists(t):
                raise FeatbenchError(f"--eval-on {t}: file does not exist")
        if self.base_to_new and self.eval_on:
            raise FeatbenchError("--base-to-new and --eval-on are separate protocols; run them as two fits")
        if isinstance(self.out, (str, os.PathLike)):
            object.__setattr__(self, "out", os.fspath(self.out))
        else:
            raise FeatbenchError(f"--out {short_repr(self.out)}: give a results file path")
        if self.save_predictions is not None:
            object.__setattr__(self, "save_predictions", os.path.abspath(os.fspath(self.save_predictions)))

    def with_(self, **changes) -> "FitSpec":
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class subsets each cell writes rows for."""
        return ("base", "new") if self.base_to_new else ("all",)


def fit_spec(caches: Iterable | str | os.PathLike, **options) -> FitSpec:
    """FitSpec from the keyword options that `run_fit` and `featbench.fit` take (``eval_on`` may be None)."""
    if options.get("eval_on") is None:
        options.pop("eval_on", None)
    return FitSpec(caches=caches, **options)


__all__ = ["FitSpec", "fit_spec", "PROTOCOLS", "check_protocol", "as_list", "DEFAULT_OUT", "DEFAULT_MAX_CELLS"]
