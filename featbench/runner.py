"""Expand a fit grid into cells, skip the ones already in the results file, run the rest, append rows.

Cells = caches x heads x param-combos (``--grid``) x shots x seeds, in that nesting order. Everything the
grid needs is checked *before* the first cell runs (caches open and follow the contract, heads exist,
``--set``/``--grid`` name real parameters, text is present for heads that need it, the few-shot rows have
features, ``--eval-on`` targets share the source's encoder fingerprint and class names), so a sweep never
dies an hour in on a typo.

Execution: in-process (``jobs=1``), joblib/loky workers (``jobs=N``; each worker limited to
max(1, cores // N) torch/BLAS threads), or Ray tasks (``ray_address``). Workers only compute; the parent
alone writes rows, in cell order, one flushed+fsync'ed line at a time, so the file is identical whatever the
parallelism and an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from featbench.backends import run_joblib, run_ray, run_serial, start_parent_watchdog  # noqa: F401  (re-exported)
from featbench.cache import Cache, check_same_encoder
from featbench.classmatch import target_mapping
from featbench.devices import may_use_cuda, plan_gpu_workers, use_deterministic
from featbench.errors import FeatbenchError, short_repr
from featbench.fewshot import fewshot_rows
from featbench.fitspec import DEFAULT_MAX_CELLS, DEFAULT_OUT, FitSpec, fit_spec
from featbench.heads import get_head_class
from featbench.heads.spec import check_params
from featbench.protocol import Cell, has_val, needs_selection_split, planned_params, selection_kind, selection_rows
from featbench.results import ResultsWriter, check_results_file, row_key
from featbench.texttower import cache_tower_record
from featbench.yamlsafe import safe_yaml_load

RUNTIME_ONLY = ("random_state", "device")


# ----------------------------------------------------------------------------------------------------
# --set / --grid
# ----------------------------------------------------------------------------------------------------
def _yaml_value(text: str, flag: str):
    try:
        return safe_yaml_load(text, flag)
    except FeatbenchError as err:
        raise FeatbenchError(f"{err} (values are YAML scalars/lists like 0.5, true, [1,2])") from None


def _split_assignment(item: str, flag: str) -> tuple[str, str]:
    if "=" not in item:
        raise FeatbenchError(f"{flag} {item}: expected HEAD.PARAM=VALUE, e.g. {flag} taskres.alpha=0.5")
    key, value = item.split("=", 1)
    key = key.strip()
    if "." not in key or key.startswith(".") or key.endswith("."):
        raise FeatbenchError(f"{flag} {item}: expected HEAD.PARAM=VALUE, e.g. {flag} taskres.alpha=0.5")
    return key, value.strip()


def parse_sets(items: Iterable[str] | None) -> dict[str, Any]:
    """['taskres.alpha=0.5', ...] -> {'taskres.alpha': 0.5} (values parsed with yaml.safe_load)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, value = _split_assignment(item, "--set")
        out[key] = _yaml_value(value, f"--set {item}")
    return out


def parse_grids(items: Iterable[str] | None) -> dict[str, list]:
    """['taskres.alpha=0.25,0.5,1'] -> {'taskres.alpha': [0.25, 0.5, 1]}; a YAML list '[..]' also works."""
    out: dict[str, list] = {}
    for item in items or []:
        key, value = _split_assignment(item, "--grid")
        if value.startswith("["):
            values = _yaml_value(value, f"--grid {item}")
            if not isinstance(values, list):
                raise FeatbenchError(f"--grid {item}: expected a comma-separated list of values")
        else:
            values = [_yaml_value(v.strip(), f"--grid {item}") for v in value.split(",") if v.strip() != ""]
        if not values:
            raise FeatbenchError(f"--grid {item}: no values; give HEAD.PARAM=V1,V2,...")
        out[key] = values
    return out


def split_key(key: str) -> tuple[str, str]:
    """"head.param" -> (head, param); the head may be a dotted module path ("pkg.mod:Class.alpha")."""
    head, _, param = key.rpartition(".")
    return head, param


def _check_override(key: str, flag: str) -> tuple[str, str]:
    head, param = split_key(key)
    try:
        cls = _head_class(head)
    except FeatbenchError as err:
        raise FeatbenchError(f"{flag} {key}: {err}") from None
    names = cls.param_names()
    if param in RUNTIME_ONLY:
        what = "--seeds" if param == "random_state" else "--device"
        raise FeatbenchError(f"{flag} {key}: '{param}' is set by {what}, not by {flag}")
    if param not in names:
        raise FeatbenchError(f"{flag} {key}: head '{head}' has no parameter '{param}'; it has: {', '.join(sorted(names)) or '(none)'}")
    return head, param


def _head_class(name: str):
    """The class of a head name or module path; the registry's one-line error (with did-you-mean) otherwise."""
    return get_head_class(name)


def _head_axes(head: str, sets: Mapping[str, Any], grids: Mapping[str, list]) -> tuple[dict, list]:
    fixed = {split_key(k)[1]: v for k, v in sets.items() if split_key(k)[0] == head}
    axes = [(split_key(k)[1], list(v)) for k, v in grids.items() if split_key(k)[0] == head]
    return fixed, axes


def n_combos(head: str, grids: Mapping[str, list]) -> int:
    """How many parameter settings `param_combos` yields for a head (arithmetic: nothing is expanded)."""
    return math.prod(len(v) for k, v in grids.items() if split_key(k)[0] == head)


def iter_combos(head: str, sets: Mapping[str, Any], grids: Mapping[str, list]) -> Iterator[dict]:
    """The fixed-parameter dicts of one head, lazily: its --set values x the product of its --grid values."""
    fixed, axes = _head_axes(head, sets, grids)
    if not axes:
        yield dict(fixed)
        return
    for values in itertools.product(*[v for _, v in axes]):
        combo = dict(fixed)
        combo.update({name: val for (name, _), val in zip(axes, values)})
        yield combo


def param_combos(head: str, sets: Mapping[str, Any], grids: Mapping[str, list]) -> list[dict]:
    """The fixed-parameter dicts of one head: its --set values x the product of its --grid values."""
    return list(iter_combos(head, sets, grids))


# ----------------------------------------------------------------------------------------------------
# planning and validation
# ----------------------------------------------------------------------------------------------------


@dataclass
class PlannedCell:
    cell: Any  # featbench.protocol.Cell
    keys: list[tuple]


def _check_values(key: str, flag: str, values: Sequence) -> None:
    """Every --set/--grid value against the head's typed declaration (Head.hyperparams), before any cell runs."""
    head, param = split_key(key)
    cls = _head_class(head)
    for v in values:
        try:
            check_params(cls, {param: v})
        except FeatbenchError as err:
            raise FeatbenchError(f"{flag} {err}") from None


def _short(text: Any, limit: int = 200) -> str:
    return short_repr(text, limit, plain=isinstance(text, str))


@dataclass
class FitPlan:
    """A validated grid, expanded lazily: ``count`` is arithmetic, iterating yields one PlannedCell at a time.

    A 1000 x 1000 grid used to be expanded (and every cell's parameters built) before its first row; now the
    count is known at once, ``run_fit`` refuses past ``--max-cells``, and cells are built as they are run.
    """

    spec: FitSpec
    sources: dict  # cache path -> (dataset, fingerprint, content id)
    target_names: list[str]

    # the grid's axes, read from the spec
    caches = property(lambda self: list(self.spec.caches))
    heads = property(lambda self: list(self.spec.heads))
    shots = property(lambda self: list(self.spec.shots))
    seeds = property(lambda self: list(self.spec.seeds))
    protocol = property(lambda self: self.spec.protocol)
    sets = property(lambda self: self.spec.sets)
    grids = property(lambda self: self.spec.grids)
    device = property(lambda self: self.spec.device)
    targets = property(lambda self: list(self.spec.eval_on))
    base_to_new = property(lambda self: self.spec.base_to_new)

    @property
    def count(self) -> int:
        per_cache = sum(n_combos(h, self.grids) for h in self.heads)
        return len(self.caches) * per_cache * len(self.shots) * len(self.seeds)

    def __len__(self) -> int:
        return self.count

    def describe(self) -> str:
        settings = sum(n_combos(h, self.grids) for h in self.heads)
        what = f"{len(self.heads)} head(s)" + (f" ({settings} settings)" if settings != len(self.heads) else "")
        return (f"{self.count} cell(s) = {len(self.caches)} cache(s) x {what} x {len(self.shots)} shot count(s) "
                f"x {len(self.seeds)} seed(s)")

    def __iter__(self) -> Iterator[PlannedCell]:
        memo: dict[tuple, dict] = {}  # params do not depend on the seed: build each head once per setting
        for path in self.caches:
            dataset, fingerprint, content = self.sources[path]
            datasets = self.target_names or [dataset]
            for h in self.heads:
                for combo in iter_combos(h, self.sets, self.grids):
                    combo_id = repr(sorted(combo.items(), key=lambda kv: kv[0]))
                    for k in self.shots:
                        for s in self.seeds:
                            cell = Cell.from_spec(self.spec, path, h, combo, k, s)
                            mkey = (h, combo_id, dataset, k)
                            params = memo.get(mkey)
                            if params is None:
                                if len(memo) > 4096:
                                    memo.clear()
                                params = memo[mkey] = planned_params(cell, dataset)
                            keys = [row_key({"fingerprint": fingerprint, "content": content, "source_dataset": dataset,
                                             "dataset": d, "head": h, "params": params, "protocol": self.protocol,
                                             "shots": k, "seed": s, "classes": c})
                                    for d in datasets for c in self.spec.classes]
                            yield PlannedCell(cell, keys)


def plan_fit(caches, *, heads, shots, seeds, protocol="paper", sets=None, grids=None, device="cpu",
             eval_on=None, base_to_new: bool = False) -> FitPlan:
    """Validate the whole grid (caches, heads, every --set/--grid value) and return it as a lazy FitPlan."""
    return plan(fit_spec(caches, heads=heads, shots=shots, seeds=seeds, protocol=protocol, sets=sets, grids=grids,
                         device=device, eval_on=eval_on, base_to_new=base_to_new))


def _check_overrides(spec: FitSpec) -> None:
    """Every --set/--grid key names a head of the grid and a parameter it has; every value passes its Param."""
    for flag, keys in (("--set", spec.sets), ("--grid", spec.grids)):
        for key in keys:
            head, _ = _check_override(key, flag)
            if head not in spec.heads:
                raise FeatbenchError(f"{flag} {_short(key, 80)}: head '{head}' is not in --heads "
                                     f"({', '.join(spec.heads)}); add it to --heads or drop the {flag}")
    for key, value in spec.sets.items():
        _check_values(key, "--set", [value])
    for key, values in spec.grids.items():
        if not isinstance(values, list) or not values:
            raise FeatbenchError(f"--grid {key}: no values; give HEAD.PARAM=V1,V2,...")
        if key in spec.sets:
            raise FeatbenchError(f"--grid {key}: the same parameter is also fixed with --set; use one of them")
        _check_values(key, "--grid", values)


def _check_targets(src, path: str, targets: Sequence[str]) -> list[str]:
    """The --eval-on caches: same encoder as the source, a test split, classes the source can score."""
    names = []
    for t in targets:
        with Cache(t) as tgt:
            check_same_encoder(src, tgt)
            if not tgt.has_split("test"):
                raise FeatbenchError(f"--eval-on {t}: the cache has no test split")
            target_mapping(src, tgt, path, t)
            names.append(tgt.dataset)
    return names


def _check_heads_served(src, path: str, classes: Mapping[str, type]) -> None:
    """Each head finds what it reads in the cache: text features, the text tower, pre-projection features."""
    for h, cls in classes.items():
        if cls.needs_text and not src.has_text:
            raise FeatbenchError(f"head '{h}' needs class-prompt text features but cache {path} has no "
                                 "/text/features; re-extract with text or drop the head")
        if cls.needs_text_tower:  # prompt learners rebuild the cache's text tower
            cache_tower_record(src)
        kind = cls.feature_kind or "features"
        if kind != "features" and not src.has_dataset(f"/splits/train/{kind}"):
            raise FeatbenchError(f"head '{h}' reads /splits/*/{kind} but cache {path} has none; re-extract with "
                                 "--pre-projection")


def _check_source(spec: FitSpec, src, path: str) -> None:
    if not src.has_split("train"):
        raise FeatbenchError(f"{path}: no train split to sample few-shot subsets from; use a cache extracted with --splits train,...")
    if len(src.labels("train")) == 0 or len(src.feature_rows("train")) == 0:
        raise FeatbenchError(f"{path}: the train split has no rows with features (/splits/train is empty); "
                             "re-extract it from a dataset with train images")
    if not spec.eval_on and not src.has_split("test"):
        raise FeatbenchError(f"{path}: no test split to evaluate on; extract it (--splits ...,test) or pass --eval-on")
    if spec.base_to_new and not src.has_text:
        raise FeatbenchError(f"--base-to-new: cache {path} has no text features, which the new classes need; "
                             "re-extract (or import) with text features")


def plan(spec: FitSpec) -> FitPlan:
    """The grid of ``spec`` as a lazy FitPlan, after checking that every cache can serve it (opened once each).

    This is the one place that answers "can these caches serve this fit?"; cells trust the answer.
    """
    classes = {h: _head_class(h) for h in spec.heads}
    _check_overrides(spec)
    sources: dict[str, tuple[str, str, str]] = {}
    target_names: list[str] = []
    for path in spec.caches:
        with Cache(path) as src:
            _check_source(spec, src, path)
            target_names = _check_targets(src, path, spec.eval_on)
            _check_heads_served(src, path, classes)
            sources[path] = (src.dataset, src.fingerprint, src.content_id)
    return FitPlan(spec=spec, sources=sources, target_names=target_names)


def _check_rows_available(plan: FitPlan) -> None:
    """Fail before running when a cell's few-shot/selection rows have no features in its cache.

    Works per (cache, shots, seed, needs a selection split): a grid's parameter settings only matter through
    whether they make the head search, so a large grid costs one cheap test per setting, not per cell.
    """
    needs: dict[str, bool] = {}  # head -> some setting of it needs the selection split
    for h in plan.heads:
        cls = _head_class(h)
        needs[h] = plan.protocol != "oracle" and any(
            needs_selection_split(cls, plan.protocol, combo) for combo in _axis_samples(h, plan.sets, plan.grids))
    want_selection = any(needs.values())
    # where each searching head selects (the paper protocol's split differs per head): one check per kind
    kinds: dict[str, str] = {}
    for h in plan.heads:
        if needs[h]:
            kinds.setdefault(selection_kind(_head_class(h), plan.protocol), h)
    for path in plan.caches:
        with Cache(path) as c:
            train_labels = c.labels("train")
            val_labels = c.labels("val") if has_val(c) else None
            have_train = set(int(r) for r in c.feature_rows("train"))
            have_val = set(int(r) for r in c.feature_rows("val")) if val_labels is not None else set()
            for k in plan.shots:
                for s in plan.seeds:
                    sub = fewshot_rows(train_labels, val_labels, k, s)
                    if not all(r in have_train for r in sub.train):
                        raise FeatbenchError(
                            f"{path}: the {k}-shot seed-{s} train subset includes rows without features; "
                            f"re-extract with --train-rows all or with these --shots/--seeds"
                        )
                    if not want_selection:
                        continue
                    for how, head in kinds.items():
                        split, rows, _ = selection_rows(how, train_labels, val_labels, k, s, sub)
                        if split == "val" and rows is None:
                            if len(have_val) != len(val_labels):
                                raise FeatbenchError(
                                    f"{path}: head {head}'s paper selects on the full val split, but only "
                                    f"{len(have_val)} of {len(val_labels)} val images have features; re-extract "
                                    f"the val split, or use --protocol val")
                        elif split == "val":
                            if not all(r in have_val for r in rows):
                                raise FeatbenchError(f"{path}: the {k}-shot seed-{s} val subset includes rows without features; re-extract the val split")
                        elif not rows or not all(r in have_train for r in rows):
                            raise FeatbenchError(
                                f"{path} has no val split and lacks features for the held-out train rows used for selection "
                                f"(head {head}, shots {k}, seed {s}); re-extract with --train-rows all, "
                                f"or use --protocol paper with heads that do not search"
                            )


def _axis_samples(head: str, sets: Mapping[str, Any], grids: Mapping[str, list]) -> Iterator[dict]:
    """Every value of every --grid axis once (the others at their first value): 1 + sum of the axis lengths
    settings instead of their product. Enough for the early row check (whether a setting makes the head search
    depends on single parameters, e.g. TaskRes's base); run_cell checks each cell again anyway."""
    fixed, axes = _head_axes(head, sets, grids)
    first = dict(fixed, **{name: values[0] for name, values in axes})
    yield first
    for name, values in axes:
        for v in values[1:]:
            yield dict(first, **{name: v})


def check_out(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a results path that is a folder or cannot be written, before anything is computed."""
    out = Path(out)
    if out.is_dir():
        raise FeatbenchError(f"{flag} {out} is a directory; pass a results file path such as {out / 'results.jsonl'}")
    if out.exists():
        if not out.is_file():
            raise FeatbenchError(f"{flag} {out} is not a regular file; give a results file such as results/results.jsonl")
        if not os.access(out, os.W_OK):
            raise FeatbenchError(f"{flag} {out} is not writable; fix its permissions or give another --out")
        return out
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FeatbenchError(f"{flag} {out}: {parent} is a file, not a folder; give a results path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FeatbenchError(f"{flag} {out}: cannot create it, folder {parent} is not writable; give another --out")
    return out


# ----------------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------------
def run_fit(caches, *, heads, shots, seeds, protocol: str = "paper", sets: Mapping | None = None,
            grids: Mapping | None = None, out: str | os.PathLike = DEFAULT_OUT, jobs: int = 1, device: str = "cpu",
            eval_on=None, progress: bool = True, ray_address: str | None = None, base_to_new: bool = False,
            save_predictions: str | os.PathLike | None = None, max_cells: int | None = DEFAULT_MAX_CELLS,
            announce=None) -> list[dict]:
    """Run every cell of the grid not already in `out`; return the rows this call appended (in cell order).

    The keyword form of :func:`execute`: the options become one :class:`featbench.fitspec.FitSpec`.
    """
    spec = fit_spec(caches, heads=heads, shots=shots, seeds=seeds, protocol=protocol, sets=sets, grids=grids,
                    out=out, jobs=jobs, device=device, eval_on=eval_on, progress=progress, ray_address=ray_address,
                    base_to_new=base_to_new, save_predictions=save_predictions, max_cells=max_cells)
    return execute(spec, announce=announce)


def _announce_on_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _planned(spec: FitSpec, announce) -> FitPlan:
    """The validated plan, announced (a grid of several cells) and held to --max-cells."""
    grid = plan(spec)
    total = grid.count
    if total > 1:  # a single cell needs no announcement
        (announce or _announce_on_stderr)(f"fit: {grid.describe()}")
    if spec.max_cells is not None and total > spec.max_cells:
        raise FeatbenchError(f"the grid has {total} cells, more than --max-cells {spec.max_cells}; narrow "
                             "--grid/--shots/--seeds/--heads, or raise the limit with --max-cells N (recipes: "
                             "`featbench run --max-cells N`)")
    _check_rows_available(grid)
    return grid


def _stream(spec: FitSpec, cells: Iterator, first: list, announce=None) -> Iterator[list[dict]]:
    """Rows of each cell, in cell order, from the back end the spec asks for."""
    if spec.ray_address is not None:
        return run_ray(cells, spec.ray_address, spec.device, spec.fast)
    if spec.jobs > 1 and len(first) > 1:
        jobs = min(spec.jobs, len(first))
        if not may_use_cuda(spec.device):
            return run_joblib(cells, jobs, spec.fast)
        gpus = worker_gpus(jobs, spec.device, announce)
        if len(gpus) > 1:
            return run_joblib(cells, len(gpus), spec.fast, gpus)
    return run_serial(cells)


def worker_gpus(jobs: int, device: str, announce=None) -> list[str]:
    """The GPUs --jobs workers use (one worker per GPU), announcing when fewer workers than asked will run."""
    import torch  # lazy: only CUDA fits get here

    gpus = plan_gpu_workers(jobs, device, torch.cuda.device_count())
    if len(gpus) < jobs:
        (announce or _announce_on_stderr)(
            f"fit: --jobs {jobs} on {device}: {len(gpus)} worker(s), one per GPU (two CUDA contexts on one GPU "
            "would share its memory)")
    return gpus


def execute(spec: FitSpec, announce=None) -> list[dict]:
    """Run every cell of ``spec`` not already in its results file; return the rows appended (in cell order).

    The cell count is announced (``announce``, default: a line on stderr) before anything runs, and a grid
    larger than ``spec.max_cells`` is refused. Cells are built lazily, as they are run.
    """
    out = check_out(spec.out)
    check_results_file(out)  # a file that is not ours is refused before any planning or fitting
    grid = _planned(spec, announce)
    writer = ResultsWriter(out)
    done = writer.keys  # grows as rows are appended (by us or a concurrent identical sweep)
    skipped = 0

    def todo_cells():
        nonlocal skipped
        for p in grid:
            if all(k in done for k in p.keys):
                skipped += 1
                continue
            yield p.cell

    pending = todo_cells()
    first = list(itertools.islice(pending, max(2, spec.jobs)))
    if not first:
        return []
    use_deterministic(spec.device, spec.fast)  # before CUDA starts in this process (and in workers it starts)
    stream = _stream(spec, itertools.chain(first, pending), first, announce)
    total, progress = grid.count, spec.progress
    appended: list[dict] = []
    bar = _progress(progress, total, skipped)
    ran = 0
    try:
        for rows in stream:
            appended.extend(writer.append(rows))  # skips rows another process appended meanwhile
            ran += 1
            bar.set(ran + skipped)
    finally:
        bar.close()
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return appended


class _NoBar:
    def set(self, completed: int) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, skipped: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        desc = "fit"
        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self._p.start()
        self._t = self._p.add_task(desc, total=total, completed=skipped)

    def set(self, completed: int) -> None:
        self._p.update(self._t, completed=completed)

    def close(self) -> None:
        self._p.stop()


def _progress(enabled: bool, total: int, skipped: int):
    return _RichBar(total, skipped) if enabled else _NoBar()


__all__ = ["run_fit", "execute", "plan", "plan_fit", "parse_sets", "parse_grids", "param_combos", "iter_combos", "n_combos", "FitPlan",
           "PlannedCell", "DEFAULT_OUT", "DEFAULT_MAX_CELLS", "check_out", "start_parent_watchdog"]
