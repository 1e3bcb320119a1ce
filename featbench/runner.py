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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from featbench.errors import FeatbenchError
from featbench.results import ResultsWriter, check_results_file, row_key

DEFAULT_OUT = "results/results.jsonl"
RUNTIME_ONLY = ("random_state", "device")


# ----------------------------------------------------------------------------------------------------
# --set / --grid
# ----------------------------------------------------------------------------------------------------
def _yaml_value(text: str, flag: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise FeatbenchError(f"{flag}: cannot parse value {text!r} (YAML scalars/lists like 0.5, true, [1,2])") from None


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


def _check_override(key: str, flag: str) -> tuple[str, str]:
    from featbench.heads import list_heads

    head, param = key.split(".", 1) if "." in key else (key, "")
    if head not in list_heads():
        raise FeatbenchError(f"{flag} {key}: unknown head '{head}'; choose from: {', '.join(list_heads())}")
    cls = _head_class(head)
    names = cls._param_names()
    if param in RUNTIME_ONLY:
        what = "--seeds" if param == "random_state" else "--device"
        raise FeatbenchError(f"{flag} {key}: '{param}' is set by {what}, not by {flag}")
    if param not in names:
        raise FeatbenchError(f"{flag} {key}: head '{head}' has no parameter '{param}'; it has: {', '.join(sorted(names)) or '(none)'}")
    return head, param


def _head_class(name: str):
    from featbench.heads import get_head_class

    try:
        return get_head_class(name)
    except FeatbenchError:
        raise
    except Exception as err:  # a registered head whose module is missing or broken
        raise FeatbenchError(f"--heads {name}: the head is registered but could not be imported ({type(err).__name__}: {err})") from None


def param_combos(head: str, sets: Mapping[str, Any], grids: Mapping[str, list]) -> list[dict]:
    """The fixed-parameter dicts of one head: its --set values x the product of its --grid values."""
    fixed = {k.split(".", 1)[1]: v for k, v in sets.items() if k.split(".", 1)[0] == head}
    axes = [(k.split(".", 1)[1], list(v)) for k, v in grids.items() if k.split(".", 1)[0] == head]
    if not axes:
        return [dict(fixed)]
    out = []
    for values in itertools.product(*[v for _, v in axes]):
        combo = dict(fixed)
        combo.update({name: val for (name, _), val in zip(axes, values)})
        out.append(combo)
    return out


# ----------------------------------------------------------------------------------------------------
# planning and validation
# ----------------------------------------------------------------------------------------------------
@dataclass
class PlannedCell:
    cell: Any  # featbench.protocol.Cell
    keys: list[tuple]


def _as_list(value, flag: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, os.PathLike):
        return [os.fspath(value)]
    return list(value)


def plan_fit(caches, *, heads, shots, seeds, protocol="paper", sets=None, grids=None, device="cpu",
             eval_on=None, base_to_new: bool = False) -> list[PlannedCell]:
    """Validate the whole grid and return its cells with the row keys each will produce."""
    from featbench.cache import Cache, check_same_encoder
    from featbench.protocol import PROTOCOLS, Cell, head_target, planned_params, target_mapping

    if protocol not in PROTOCOLS:
        raise FeatbenchError(f"--protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    cache_paths = [os.path.abspath(os.fspath(p)) for p in _as_list(caches, "CACHE")]
    cache_paths = list(dict.fromkeys(cache_paths))
    if not cache_paths:
        raise FeatbenchError("no cache files given; pass one or more CACHE.h5 paths")
    heads = _as_list(heads, "--heads")
    if not heads:
        raise FeatbenchError("--heads is empty; name at least one head (see `featbench fit --help`)")
    heads = list(dict.fromkeys(heads))
    try:
        shots = [int(k) for k in shots]
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise FeatbenchError("--shots/--seeds expect integers like 1,2,4") from None
    if not shots or any(k < 1 for k in shots):
        raise FeatbenchError(f"--shots {shots}: give positive shot counts like 1,2,4,8,16")
    if not seeds:
        raise FeatbenchError("--seeds is empty; give seeds like 1,2,3")
    if str(device).split(":")[0] not in ("cpu", "cuda", "auto", "mps"):
        raise FeatbenchError(f"--device {device}: use cpu, cuda, cuda:N or auto")
    sets = dict(sets or {})
    grids = {k: list(v) for k, v in dict(grids or {}).items()}
    for key in sets:
        _check_override(key, "--set")
    for key, values in grids.items():
        _check_override(key, "--grid")
        if not values:
            raise FeatbenchError(f"--grid {key}: no values; give HEAD.PARAM=V1,V2,...")
        if key in sets:
            raise FeatbenchError(f"--grid {key}: the same parameter is also fixed with --set; use one of them")
    classes = {}
    for h in heads:
        from featbench.heads import list_heads

        if h not in list_heads():
            raise FeatbenchError(f"--heads {h}: unknown head; choose from: {', '.join(list_heads())}")
        classes[h] = _head_class(h)
    targets = [os.path.abspath(os.fspath(p)) for p in _as_list(eval_on, "--eval-on")]
    if base_to_new and targets:
        raise FeatbenchError("--base-to-new and --eval-on are separate protocols; run them as two fits")

    planned: list[PlannedCell] = []
    for path in cache_paths:
        with Cache(path) as src:
            if not src.has_split("train"):
                raise FeatbenchError(f"{path}: no train split to sample few-shot subsets from; use a cache extracted with --splits train,...")
            if not targets and not src.has_split("test"):
                raise FeatbenchError(f"{path}: no test split to evaluate on; extract it (--splits ...,test) or pass --eval-on")
            content = src.content_id
            if base_to_new and not src.has_text:
                raise FeatbenchError(f"--base-to-new: cache {path} has no text features, which the new classes need; "
                                     "re-extract (or import) with text features")
            target_names = []
            for t in targets:
                if not os.path.exists(t):
                    raise FeatbenchError(f"--eval-on {t}: file does not exist")
                with Cache(t) as tgt:
                    check_same_encoder(src, tgt)
                    if not tgt.has_split("test"):
                        raise FeatbenchError(f"--eval-on {t}: the cache has no test split")
                    target_mapping(src, tgt, path, t)
                    target_names.append(tgt.dataset)
            for h in heads:
                cls = classes[h]
                if getattr(cls, "needs_text", False) and not src.has_text:
                    raise FeatbenchError(f"head '{h}' needs class-prompt text features but cache {path} has no /text/features; re-extract with text or drop the head")
                if getattr(cls, "needs_text_tower", False):  # prompt learners rebuild the cache's text tower
                    from featbench.texttower import cache_tower_record

                    cache_tower_record(src)
                kind = getattr(cls, "feature_kind", "features") or "features"
                if kind != "features" and not src.has_dataset(f"/splits/train/{kind}"):
                    raise FeatbenchError(f"head '{h}' reads /splits/*/{kind} but cache {path} has none; re-extract with --pre-projection")
                target = head_target(h)
                for combo in param_combos(h, sets, grids):
                    for k in shots:
                        for s in seeds:
                            cell = Cell(cache=path, head=h, head_target=target, overrides=dict(combo),
                                        protocol=protocol, shots=k, seed=s, device=str(device), eval_on=tuple(targets),
                                        base_to_new=bool(base_to_new))
                            params = planned_params(cell, src.dataset)
                            datasets = target_names or [src.dataset]
                            subsets = ("base", "new") if base_to_new else ("all",)
                            keys = [row_key({"fingerprint": src.fingerprint, "content": content, "source_dataset": src.dataset, "dataset": d,
                                             "head": h, "params": params, "protocol": protocol, "shots": k, "seed": s,
                                             "classes": c})
                                    for d in datasets for c in subsets]
                            planned.append(PlannedCell(cell, keys))
    return planned


def _check_rows_available(todo: Sequence[PlannedCell]) -> None:
    """Fail before running when a cell's few-shot/selection rows have no features in its cache."""
    from featbench.cache import Cache
    from featbench.fewshot import fewshot_rows
    from featbench.protocol import has_val, holdout_rows, needs_selection_split, resolve_head_class

    by_cache: dict[str, list] = {}
    for p in todo:
        by_cache.setdefault(p.cell.cache, []).append(p.cell)
    for path, cells in by_cache.items():
        with Cache(path) as c:
            train_labels = c.labels("train")
            val_labels = c.labels("val") if has_val(c) else None
            have_train = set(int(r) for r in c.feature_rows("train"))
            have_val = set(int(r) for r in c.feature_rows("val")) if val_labels is not None else set()
            seen: dict[tuple, Any] = {}
            for cell in cells:
                key = (cell.shots, cell.seed)
                if key not in seen:
                    seen[key] = fewshot_rows(train_labels, val_labels, cell.shots, cell.seed)
                sub = seen[key]
                if not all(r in have_train for r in sub.train):
                    raise FeatbenchError(
                        f"{path}: the {cell.shots}-shot seed-{cell.seed} train subset includes rows without features; "
                        f"re-extract with --train-rows all or with these --shots/--seeds"
                    )
                cls = resolve_head_class(cell)
                if cell.protocol == "oracle" or not needs_selection_split(cls, cell.protocol, cell.overrides):
                    continue
                if sub.val is not None:
                    if not all(r in have_val for r in sub.val):
                        raise FeatbenchError(f"{path}: the {cell.shots}-shot seed-{cell.seed} val subset includes rows without features; re-extract the val split")
                else:
                    rows = holdout_rows(train_labels, sub.train, cell.shots, cell.seed)
                    if not rows or not all(r in have_train for r in rows):
                        raise FeatbenchError(
                            f"{path} has no val split and lacks features for the held-out train rows used for selection "
                            f"(head {cell.head}, shots {cell.shots}, seed {cell.seed}); re-extract with --train-rows all, "
                            f"or use --protocol paper with heads that do not search"
                        )


# ----------------------------------------------------------------------------------------------------
# execution back ends (each yields (cell index, rows) in cell order)
# ----------------------------------------------------------------------------------------------------
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _run_serial(cells) -> Iterator[list[dict]]:
    from featbench.protocol import close_cached, run_cell

    try:
        for cell in cells:
            yield run_cell(cell)
    finally:
        close_cached()


def _run_joblib(cells, jobs: int) -> Iterator[list[dict]]:
    from joblib import Parallel, delayed

    from featbench.protocol import run_cell_bounded

    threads = max(1, _cores() // jobs)
    parallel = Parallel(n_jobs=jobs, backend="loky", return_as="generator", inner_max_num_threads=threads)
    yield from parallel(delayed(run_cell_bounded)(cell, threads) for cell in cells)


def _run_ray(cells, address: str) -> Iterator[list[dict]]:
    try:
        import ray
    except ImportError:
        raise FeatbenchError('--ray needs the optional Ray dependency: pip install "featbench[ray]"') from None
    from featbench.protocol import run_cell_bounded

    started = False
    if not ray.is_initialized():
        try:
            if address in ("local", "", None):
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as err:
            raise FeatbenchError(f"--ray {address}: could not connect to a Ray cluster ({err})") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1)(run_cell_bounded)
        refs = [remote.remote(cell, 1) for cell in cells]
        for ref in refs:
            try:
                yield ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, FeatbenchError):
                    raise FeatbenchError(str(cause)) from None
                raise
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------------
def run_fit(caches, *, heads, shots, seeds, protocol: str = "paper", sets: Mapping | None = None,
            grids: Mapping | None = None, out: str | os.PathLike = DEFAULT_OUT, jobs: int = 1, device: str = "cpu",
            eval_on=None, progress: bool = True, ray_address: str | None = None, base_to_new: bool = False,
            save_predictions: str | os.PathLike | None = None) -> list[dict]:
    """Run every cell of the grid not already in `out`; return the rows this call appended (in cell order).
    ``save_predictions``: a folder receiving each new row's test predictions (``<row hash>.npz``)."""
    jobs = int(jobs)
    if jobs < 1:
        raise FeatbenchError(f"--jobs {jobs}: give 1 or more worker processes")
    out = Path(out)
    check_results_file(out)  # a file that is not ours is refused before any planning or fitting
    planned = plan_fit(caches, heads=heads, shots=shots, seeds=seeds, protocol=protocol, sets=sets, grids=grids,
                       device=device, eval_on=eval_on, base_to_new=base_to_new)
    writer = ResultsWriter(out)
    done = writer.keys
    todo = [p for p in planned if not all(k in done for k in p.keys)]
    if not todo:
        return []
    _check_rows_available(todo)
    cells = [p.cell for p in todo]
    if save_predictions is not None:
        for c in cells:
            c.save_predictions = os.path.abspath(os.fspath(save_predictions))
    if ray_address is not None:
        stream = _run_ray(cells, ray_address)
    elif jobs > 1 and len(cells) > 1:
        stream = _run_joblib(cells, min(jobs, len(cells)))
    else:
        stream = _run_serial(cells)

    appended: list[dict] = []
    bar = _progress(progress, len(cells), len(planned) - len(todo))
    try:
        for rows in stream:
            appended.extend(writer.append(rows))  # skips rows another process appended meanwhile
            bar.advance()
    finally:
        bar.close()
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return appended


class _NoBar:
    def advance(self) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, skipped: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        desc = "fit" + (f" ({skipped} done before, skipped)" if skipped else "")
        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self._p.start()
        self._t = self._p.add_task(desc, total=total)

    def advance(self) -> None:
        self._p.advance(self._t)

    def close(self) -> None:
        self._p.stop()


def _progress(enabled: bool, total: int, skipped: int):
    return _RichBar(total, skipped) if enabled else _NoBar()


__all__ = ["run_fit", "plan_fit", "parse_sets", "parse_grids", "param_combos", "PlannedCell", "DEFAULT_OUT"]
