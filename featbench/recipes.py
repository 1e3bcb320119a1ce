"""Recipes: one YAML file names a whole experiment (datasets × heads × shots × seeds × grids) and drives both
stages — extraction and the fit grid — then writes tables and plots next to the results.

Every key is checked against an explicit schema (:data:`SCHEMA`, :data:`EXTRACT_SCHEMA`): an unknown key, a
duplicated key or a value of the wrong type is an error naming the key and the file, never a silent default.
Relative paths in a recipe (``root``, ``roots``, ``cache_dir``, ``out``, a custom dataset's ``folder``,
``manifest``, ``templates`` and ``classnames``) are relative to the working directory the command runs in, like
the paths given on the command line. The schema and those checks live in :mod:`featbench.recipe_schema`; this
module runs a checked recipe.

View sets come from the heads: unless ``extract`` lists ``view_scales`` (or ``view_scale``) to override them,
a recipe extracts one view set per crop scale its heads' papers train on (``Head.paper_view_scale``, see
:func:`featbench.extract_spec.heads_view_scales`), so every head reproduces its own paper's procedure.

A ``datasets`` entry is a catalog name or a custom dataset, ``{name: N, folder: PATH}`` or
``{name: N, manifest: FILE}`` (optionally with ``templates`` and ``classnames``, a file or a list each), the
mappings of ``featbench extract --dataset folder|csv --name N``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

from featbench import tables
from featbench.b2n_table import aggregate_base_to_new
from featbench.cache import default_cache_path
from featbench.datasets import dataset_info, locate_dataset_dir
from featbench.encoders import hub_reachable, local_checkpoint, resolve_model, weights_label
from featbench.errors import FeatbenchError, FingerprintMismatch
from featbench.extract_spec import ExtractSpec
from featbench.fitspec import FitSpec
from featbench.heads import get_head_class
from featbench.outputs import ensure_folder
from featbench.plots import plot_curves
from featbench.result_reader import load_results
from featbench.recipe_schema import (  # noqa: F401  (the recipe file's names are featbench.recipes' too)
    DEFAULT_TABLES, EXTRACT_SCHEMA, PACKAGED_RECIPES, REPORT_NAMES, SCHEMA, Recipe, describe_schema, find_recipe,
    load_recipe, packaged_recipes, recipe_summary, validate,
)
from featbench.runner import execute, n_combos


# -- running ---------------------------------------------------------------------------------------------------
def cache_paths(recipe: Recipe) -> dict[str, Path]:
    """Where extraction puts (or put) each dataset's cache."""
    return {ds: Path(default_cache_path(recipe.cache_dir, recipe.model, recipe.pretrained, ds))
            for ds in [*recipe.datasets, *recipe.eval_on]}


def select_datasets(recipe: Recipe, names: list[str] | None) -> Recipe:
    """The recipe restricted to some of its datasets (``run --datasets``); eval_on targets are kept."""
    if not names:
        return recipe
    import dataclasses

    unknown = [n for n in names if n not in recipe.datasets]
    if unknown:
        close = difflib.get_close_matches(unknown[0], recipe.datasets, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise FeatbenchError(f"--datasets {','.join(names)}: {unknown[0]!r} is not in the recipe's datasets "
                             f"({', '.join(recipe.datasets)}){hint}")
    return dataclasses.replace(recipe, datasets=[d for d in recipe.datasets if d in names],
                               roots={k: v for k, v in recipe.roots.items() if k in names or k in recipe.eval_on})


class CheckProblems(FeatbenchError):
    """What ``run --check`` found wrong: ``problems`` holds one line each (the CLI prints one per line); the
    message joins them for callers that print one line."""

    def __init__(self, source, problems: list[str]):
        self.source, self.problems = str(source), list(problems)
        super().__init__(f"{source}: --check found {len(problems)} problem(s): " + "; ".join(problems))


def check_recipe(recipe: Recipe, *, root: str | Path | None = None, only_fit: bool = False,
                 overwrite: bool = False) -> list[str]:
    """What ``run --check`` verifies beyond the schema, without running anything: the view sets extraction
    makes, every dataset's data (unless ``only_fit``; custom datasets are read like catalog ones), whether
    existing caches cover the view sets, the weights (found locally, or downloadable). Returns report lines;
    raises :class:`CheckProblems` with every problem found."""
    lines, problems = [view_sets_line(recipe)], []
    caches = cache_paths(recipe)
    need_data = []
    for ds in [*recipe.datasets, *recipe.eval_on]:
        if caches[ds].is_file():
            as_is = only_fit or recipe.dataset_root(ds, root) is None  # run fits such a cache as it is
            _check_cache(recipe, ds, caches[ds], as_is=as_is, overwrite=overwrite, lines=lines, problems=problems)
            continue
        if only_fit:
            problems.append(f"{ds}: cache {caches[ds]} not found (--only-fit)")
            continue
        need_data.append(ds)
        try:
            where = _data_phrase(recipe, ds, root)
        except FeatbenchError as err:
            problems.append(f"{ds}: {err}")
            continue
        lines.append(f"  {ds}: {where}; will be extracted to {caches[ds]}")
    if need_data:
        try:
            lines.append(f"  weights: {weights_status(recipe.model, recipe.pretrained)}")
        except FeatbenchError as err:
            problems.append(f"weights: {err}")
    if problems:
        raise CheckProblems(recipe.path or "recipe", problems)
    return lines


def view_sets_line(recipe: Recipe) -> str:
    """Which view sets extraction makes, and where their crop scales come from."""
    if not recipe.extract.get("views", 10):
        return "  view sets: none (extract.views is 0)"
    if "view_scales" in recipe.extract or "view_scale" in recipe.extract:
        why = "the recipe's extract." + ("view_scales" if "view_scales" in recipe.extract else "view_scale")
    else:
        users = [f"{h} {_scale_text(get_head_class(h).paper_view_scale)}" for h in recipe.heads
                 if get_head_class(h).uses_views and get_head_class(h).paper_view_scale is not None]
        why = ("the heads' paper crop scales: " + ", ".join(users)) if users else "no head trains on views: the default"
    return f"  view sets: {' + '.join(_scale_text(sc) for sc in recipe.view_scales())} ({why})"


def _scale_text(scale) -> str:
    return f"({float(scale[0]):g}, {float(scale[1]):g})" if scale is not None else "(unrecorded)"


def _data_phrase(recipe: Recipe, ds: str, root) -> str:
    """Where a dataset's images are, checked as extraction would read them (FeatbenchError if they are not)."""
    if ds in recipe.custom:
        from featbench.extract import load_request_dataset  # lazy: the pipeline's modules, only for custom data

        data = load_request_dataset(recipe.extract_spec(ds, None))
        kind = "folder" if "folder" in recipe.custom[ds] else "manifest"
        return f"custom {kind} {recipe.custom[ds][kind]} ({len(data.classnames)} classes)"
    ds_root = recipe.dataset_root(ds, root)
    if ds_root is None:
        raise FeatbenchError("no data root (pass --root DATA or set 'root' in the recipe)")
    base = Path(ds_root).expanduser()
    if not base.is_dir():
        raise FeatbenchError(f"data root {base} is not a folder")
    return f"data in {locate_dataset_dir(dataset_info(ds), base)}"


def _check_cache(recipe: Recipe, ds: str, path: Path, *, as_is: bool, overwrite: bool, lines: list[str],
                 problems: list[str]) -> None:
    """An existing cache: does it hold the view sets the recipe extracts (run refuses one that does not)?"""
    from featbench.cache import Cache  # lazy: h5py

    try:
        with Cache(path) as c:
            have = tuple(c.view_sets().values())
    except FeatbenchError as err:
        problems.append(f"{ds}: cache {path} cannot be read ({err}); rerun with --overwrite to rebuild it")
        return
    want = recipe.view_scales()
    if ds in recipe.eval_on or not recipe.extract.get("views", 10) or have == want:
        covered = "" if ds in recipe.eval_on or not have else f", covers view sets {_sets_text(have)}"
        lines.append(f"  {ds}: cache {path} exists{covered} (reused when its extraction covers the recipe's)")
    elif as_is:
        lines.append(f"  {ds}: cache {path} holds view sets {_sets_text(have)}, not {_sets_text(want)}; fitted as "
                     "it is: a head whose paper scale is missing trains on another set (rows note it)")
    elif overwrite:
        lines.append(f"  {ds}: cache {path} holds view sets {_sets_text(have)}; --overwrite rebuilds it with "
                     f"{_sets_text(want)}")
    else:
        keep = "" if not have or None in have else \
            f", or set extract.view_scales to '{':'.join(f'{lo:g},{hi:g}' for lo, hi in have)}' to use it as it is"
        problems.append(f"{ds}: cache {path} holds view sets {_sets_text(have)}, the recipe extracts "
                        f"{_sets_text(want)}; rerun with --overwrite to rebuild it{keep}")


def _sets_text(scales) -> str:
    return " + ".join(_scale_text(sc) for sc in scales) if scales else "none"


def weights_status(model: str, pretrained: str) -> str:
    """Where `extract` would get the weights, looked up offline (no download): a phrase, or FeatbenchError."""
    name, _ = resolve_model(model)
    label = weights_label(pretrained)
    if label == "none":
        return f"{name} with random weights (--pretrained none)"
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return f"{name} from the file {path}"
    from open_clip.pretrained import get_pretrained_cfg

    cfg = dict(get_pretrained_cfg(name, str(pretrained)) or {})
    if not cfg:
        raise FeatbenchError(f"--pretrained {pretrained}: not an open_clip tag for {name} and not a file")
    local, tried = local_checkpoint(cfg)
    if local:
        return f"{name}/{pretrained} cached at {local}"
    if hub_reachable():
        return f"{name}/{pretrained} not cached; extract will download it (the hub is reachable)"
    raise FeatbenchError(f"{name}/{pretrained} is not cached locally (tried {'; '.join(tried)}) and the hub is "
                         "unreachable; download the weights where there is internet or pass a checkpoint file")


def _output_folder(folder: Path) -> None:
    """Create the output folder, or one clear line saying why not (before any extraction or fitting)."""
    ensure_folder(folder, f"output {folder}", "pass --out FOLDER or set 'out' in the recipe")


def run_recipe(recipe: Recipe, *, root: str | Path | None = None, only_fit: bool = False,
               out: str | Path | None = None, progress: bool = True, echo: Callable[[str], None] = print,
               overwrite: bool = False, plot_title: str | None = None, max_cells: int | None = 10_000) -> dict:
    """Extract (reusing caches whose extraction covers the recipe's), fit the grid, write tables and plots.
    ``overwrite`` rebuilds caches that cannot serve the recipe; a fit grid over ``max_cells`` is refused before
    anything is extracted. Returns the output paths."""
    out_dir = Path(out) if out is not None else recipe.out_dir
    _output_folder(out_dir)
    results_path = out_dir / "results.jsonl"


    cells = len(recipe.datasets) * sum(n_combos(h, recipe.grids) for h in recipe.heads) * len(recipe.shots) \
        * len(recipe.seeds)
    if max_cells is not None and cells > int(max_cells):  # before hours of extraction, not after
        raise FeatbenchError(f"{recipe.path or 'the recipe'}: its fit grid has {cells} cells, more than --max-cells "
                             f"{int(max_cells)}; narrow its grids/shots/seeds/heads or pass --max-cells N")
    caches: dict[str, Path] = {}
    if only_fit:
        caches = cache_paths(recipe)
        missing = [str(p) for p in caches.values() if not p.is_file()]
        if missing:
            raise FeatbenchError(f"--only-fit: cache(s) not found: {', '.join(missing)}; run without --only-fit "
                                 "to extract them first")
    else:
        from featbench.extract import run_extract  # lazy: the pipeline's modules load only when extracting

        for ds in [*recipe.datasets, *recipe.eval_on]:
            ds_root = recipe.dataset_root(ds, root)
            if ds_root is None:
                existing = cache_paths(recipe)[ds]
                if existing.is_file():  # nothing to extract from: fit what is there (as --only-fit does)
                    echo(f"no data root for {ds}: using the existing cache {existing} as it is")
                    caches[ds] = existing
                    continue
                raise FeatbenchError(f"no data root for dataset '{ds}': pass --root DATA or set 'root' in "
                                     f"{recipe.path or 'the recipe'}")
            spec = recipe.extract_spec(ds, ds_root, progress=progress, overwrite=overwrite)
            echo(f"extract {ds} ({recipe.model}/{recipe.pretrained}) from {ds_root}{_views_phrase(spec)}")
            try:
                caches[ds] = run_extract(spec, log=echo)
            except FingerprintMismatch as err:  # the message names extract's flags; say what run takes
                raise FingerprintMismatch(str(err).replace("pass --overwrite to rebuild it or --out another file",
                                                           "rerun with `featbench run --overwrite` to rebuild it, "
                                                           "--only-fit to fit it as it is, or set another cache_dir "
                                                           "in the recipe")) from None

    echo(f"fit {len(recipe.heads)} head(s) × {len(recipe.datasets)} dataset(s) × shots "
         f"{','.join(map(str, recipe.shots))} × seeds {','.join(map(str, recipe.seeds))} ({recipe.protocol} protocol)")
    spec = FitSpec(caches=[caches[ds] for ds in recipe.datasets], heads=recipe.heads, shots=recipe.shots,
                   seeds=recipe.seeds, protocol=recipe.protocol, sets=recipe.sets, grids=recipe.grids,
                   out=results_path, jobs=recipe.jobs, device=recipe.device, progress=progress,
                   max_cells=max_cells, base_to_new=recipe.base_to_new)
    execute(spec, announce=echo)  # in-domain rows (for DG recipes: the source's own test accuracy)
    if recipe.base_to_new:
        written = write_reports(results_path, out_dir, protocol=recipe.protocol, base_to_new=True)
        written["results"] = results_path
        return written
    if recipe.eval_on:  # domain generalisation: the same heads, evaluated on the target datasets' test sets
        echo(f"evaluate on {', '.join(recipe.eval_on)} (trained on {', '.join(recipe.datasets)})")
        execute(spec.with_(eval_on=[caches[ds] for ds in recipe.eval_on]), announce=echo)
    written = write_reports(results_path, out_dir, tables_spec=recipe.tables, protocol=recipe.protocol,
                            plot_title=plot_title)
    written["results"] = results_path
    return written


def _views_phrase(spec: ExtractSpec) -> str:
    """', view sets (0.5, 1) + (0.08, 1)' for an extraction with views; '' without."""
    if not spec.views or "train" not in spec.splits:
        return ""
    return ", view sets " + " + ".join(f"({lo:g}, {hi:g})" for lo, hi in spec.view_scales)


def write_reports(results_path: str | Path, out_dir: str | Path, *, tables_spec=DEFAULT_TABLES,
                  protocol: str | None = None, base_to_new: bool = False, plot_title: str | None = None) -> dict:
    """Write each table as CSV, LaTeX and Markdown plus the accuracy-vs-shots plot next to the results.

    With ``base_to_new`` the one table is Base / New / H (``table-base-to-new.*``) and there is no plot.
    A table spec's ``datasets`` keeps only those datasets (its Average is over them); ``name`` is its file stem.
    Returns {"tables": [paths...], "plots": [paths...], "markdown": {name: text}}.
    """
    out_dir = Path(out_dir)
    df = load_results([results_path])
    written: dict[str, Any] = {"tables": [], "plots": [], "markdown": {}}
    suffix = {"csv": ".csv", "latex": ".tex", "markdown": ".md"}
    if base_to_new:
        t = aggregate_base_to_new(df, protocol=protocol, names=REPORT_NAMES)
        for fmt, ext in suffix.items():
            path = out_dir / ("table-base-to-new" + ext)
            path.write_text(tables.render(t, fmt), encoding="utf-8")
            written["tables"].append(path)
        written["markdown"]["table-base-to-new"] = tables.render(t, "markdown")
        return written
    for spec in tables_spec:
        metric = spec.get("metric", "acc")
        groups = tables.aggregate_by_encoder(df, metric=metric, rows=spec["rows"], cols=spec["cols"], protocol=protocol,
                                             datasets=spec.get("datasets"), names=REPORT_NAMES)
        stem = spec.get("name") or f"table-{spec['rows']}-by-{spec['cols']}" + ("" if metric == "acc" else f"-{metric}")
        for fmt, ext in suffix.items():
            path = out_dir / (stem + ext)
            path.write_text(tables.render_groups(groups, fmt), encoding="utf-8")
            written["tables"].append(path)
        written["markdown"][stem] = tables.render_groups(groups, "markdown")
    written["plots"] = plot_curves(df, out_dir, protocol=protocol, title=plot_title, names=REPORT_NAMES)
    return written


__all__ = ["Recipe", "SCHEMA", "EXTRACT_SCHEMA", "load_recipe", "validate", "run_recipe", "write_reports",
           "cache_paths", "describe_schema", "select_datasets", "check_recipe", "weights_status", "CheckProblems",
           "view_sets_line", "find_recipe", "packaged_recipes", "recipe_summary", "PACKAGED_RECIPES"]
