"""Recipes: one YAML file names a whole experiment (datasets × heads × shots × seeds × grids) and drives both
stages — extraction and the fit grid — then writes tables and plots next to the results.

Every key is checked against an explicit schema (:data:`SCHEMA`, :data:`EXTRACT_SCHEMA`): an unknown key, a
duplicated key or a value of the wrong type is an error naming the key and the file, never a silent default.
Relative paths in a recipe (``root``, ``roots``, ``cache_dir``, ``out``) are relative to the working directory
the command runs in, like the paths given on the command line.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from featbench import tables
from featbench.b2n_table import aggregate_base_to_new
from featbench.cache import default_cache_path
from featbench.datasets import dataset_info, list_datasets, locate_dataset_dir
from featbench.devices import DEVICE_PATTERN
from featbench.encoders import hub_reachable, local_checkpoint, resolve_model, weights_label
from featbench.errors import FeatbenchError, FingerprintMismatch, short_repr
from featbench.fitspec import FitSpec
from featbench.heads import get_head_class, is_module_path, list_heads
from featbench.heads.spec import check_params
from featbench.outputs import ensure_folder
from featbench.plots import plot_curves
from featbench.runner import execute, n_combos
from featbench.yamlsafe import MAX_YAML_DEPTH, MAX_YAML_VALUES, safe_yaml_load  # noqa: F401  (re-exported)

PROTOCOLS = ("paper", "val", "oracle")
DIMS = ("dataset", "head", "shots")
DTYPES = ("float16", "float32")
SPLITS = ("train", "val", "test")

# -- value checks: each returns an error phrase ("must be ...") or None --------------------------------------


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v):
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def _opt_str(v):
    return None if v is None else _str(v)


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _int_min(lo: int):
    def check(v):
        return None if _is_int(v) and v >= lo else f"must be an integer >= {lo}"
    return check


def _int_list(lo: int = 1):
    def check(v):
        if not isinstance(v, list) or not v or not all(_is_int(x) and x >= lo for x in v):
            return f"must be a non-empty list of integers >= {lo}, e.g. [1, 2, 4]"
        if len(set(v)) != len(v):
            return "must not repeat values"
        return None
    return check


def _device(v):
    ok = isinstance(v, str) and re.fullmatch(DEVICE_PATTERN, v.strip().lower())
    return None if ok else "must be auto, cpu, cuda or cuda:N (e.g. cuda:1)"


def _str_list(v):
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        return "must be a non-empty list of strings"
    if len(set(v)) != len(v):
        return "must not repeat values"
    return None


def _choice(options):
    def check(v):
        return None if v in options else f"must be one of {', '.join(map(str, options))}"
    return check


def _str_map(v):
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) and x for k, x in v.items()):
        return "must be a mapping of dataset name -> path string"
    return None


def _scalarish(x) -> bool:
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    if isinstance(x, list):
        return all(_scalarish(i) for i in x)
    return False


def _sets(v):
    if not isinstance(v, dict) or not v:
        return "must be a non-empty mapping of 'head.param' -> value, e.g. {taskres.alpha: 0.5}"
    for k, x in v.items():
        if not isinstance(k, str) or k.count(".") < 1:
            return f"key {k!r} must look like 'head.param'"
        if not _scalarish(x):
            return f"value of {k!r} must be a number, string, boolean, null or a list of those"
    return None


def _grids(v):
    if not isinstance(v, dict) or not v:
        return "must be a non-empty mapping of 'head.param' -> list of values, e.g. {taskres.alpha: [0.25, 0.5]}"
    for k, x in v.items():
        if not isinstance(k, str) or k.count(".") < 1:
            return f"key {k!r} must look like 'head.param'"
        if not isinstance(x, list) or not x or not all(_scalarish(i) for i in x):
            return f"value of {k!r} must be a non-empty list of values"
    return None


def _tables(v):
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of {rows: ..., cols: ...} mappings"
    for t in v:
        if not isinstance(t, dict) or set(t) - {"rows", "cols", "metric", "datasets", "name"} or not {"rows", "cols"} <= set(t):
            return "entries must be mappings with keys rows, cols (and optionally metric, datasets, name)"
        if "datasets" in t and _str_list(t["datasets"]):
            return "datasets (the datasets a table keeps; its Average is over them) must be a list of names"
        if "name" in t and _str(t["name"]):
            return "name (the table's file stem) must be a non-empty string"
        if t["rows"] not in DIMS or t["cols"] not in DIMS or t["rows"] == t["cols"]:
            return f"rows/cols must be two different values of {', '.join(DIMS)}"
        if t.get("metric", "acc") not in ("acc", "mean_per_class_recall"):
            return "metric must be acc or mean_per_class_recall"
    return None


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], str | None]
    doc: str
    required: bool = False


#: `extract:` — options passed to featbench.extract.extract (see `featbench extract --help`)
EXTRACT_SCHEMA: dict[str, Field] = {
    "views": Field(_int_min(0), "augmented views per few-shot train image (Tip-Adapter: 10)"),
    "view_shots": Field(_int_list(1), "shot counts whose few-shot images get views (default: the recipe's shots)"),
    "seeds": Field(_int_list(0), "few-shot seeds whose images get views (default: the recipe's seeds)"),
    "splits": Field(lambda v: _str_list(v) or (None if set(v) <= set(SPLITS) else f"must be a subset of {SPLITS}"),
                    "splits to encode"),
    "train_rows": Field(_str, "which train rows get plain features: all | fewshot"),
    "all_views": Field(_bool, "views for every train image, not only the few-shot union"),
    "batch_size": Field(_int_min(1), "images per encoder batch"),
    "workers": Field(_int_min(0), "DataLoader worker processes"),
    "device": Field(lambda v: _device(v), "auto | cpu | cuda | cuda:N"),
    "dtype": Field(_choice(DTYPES), "on-disk feature dtype"),
    "pre_projection": Field(_bool, "also store pre-projection features (needed by prolip, text-projection)"),
    "view_scale": Field(_str, "RandomResizedCrop area scale of the views, min,max (default 0.5,1)"),
    "view_scales": Field(_str, "one view set per crop scale, e.g. '0.5,1:0.08,1' (each head uses its paper's)"),
    "skip_bad_images": Field(_bool, "skip unreadable images instead of failing"),
    "templates": Field(_str, "prompt templates file for every dataset (see `featbench extract --templates`)"),
}

#: the top-level keys of a recipe
SCHEMA: dict[str, Field] = {
    "name": Field(_str, "a short name (default: the file name)"),
    "description": Field(_str, "free text"),
    "datasets": Field(_str_list, "datasets to extract and fit (featbench.datasets.list_datasets())", True),
    "root": Field(_opt_str, "common data root (the CoOp DATA folder); --root overrides it"),
    "roots": Field(_str_map, "per-dataset roots, overriding root"),
    "model": Field(_str, "open_clip model name (e.g. RN50, ViT-B-16, tiny-vit)", True),
    "pretrained": Field(_str, "open_clip pretrained tag or a checkpoint file (e.g. openai, none)", True),
    "cache_dir": Field(_str, "where caches live (default: cache)"),
    "extract": Field(lambda v: None if isinstance(v, dict) else "must be a mapping of extraction options",
                     "extraction options: " + ", ".join(EXTRACT_SCHEMA)),
    "heads": Field(_str_list, "heads to fit (featbench.heads.list_heads())", True),
    "shots": Field(_int_list(1), "shot counts, e.g. [1, 2, 4, 8, 16]", True),
    "seeds": Field(_int_list(0), "few-shot seeds, e.g. [1, 2, 3]", True),
    "protocol": Field(_choice(PROTOCOLS), "hyperparameter selection protocol (default: paper)"),
    "sets": Field(_sets, "fixed hyperparameter overrides, 'head.param': value"),
    "grids": Field(_grids, "hyperparameter grids, 'head.param': [values] (one result row per value)"),
    "eval_on": Field(_str_list, "extra test-only datasets to evaluate the trained heads on (domain generalisation)"),
    "jobs": Field(_int_min(1), "parallel fit workers (default: 1)"),
    "device": Field(lambda v: _device(v), "device for fitting heads: cpu | cuda | cuda:N | auto (default: cpu)"),
    "out": Field(_str, "output directory for results, tables and plots (default: results/<name>)"),
    "base_to_new": Field(_bool, "CoCoOp's base-to-new protocol: train on the base half of the classes, report "
                                "Base / New / H (default: false)"),
    "tables": Field(_tables, "tables to write (default: rows dataset × cols shots, and rows head × cols shots)"),
}

DEFAULT_TABLES = ({"rows": "dataset", "cols": "shots"}, {"rows": "head", "cols": "shots"})


@dataclass
class Recipe:
    """A validated recipe. ``path`` is the file it came from (None for one built in code, e.g. the demo)."""

    datasets: list[str]
    model: str
    pretrained: str
    heads: list[str]
    shots: list[int]
    seeds: list[int]
    name: str = "recipe"
    description: str = ""
    root: str | None = None
    roots: dict[str, str] = field(default_factory=dict)
    cache_dir: str = "cache"
    extract: dict[str, Any] = field(default_factory=dict)
    protocol: str = "paper"
    sets: dict[str, Any] = field(default_factory=dict)
    grids: dict[str, list] = field(default_factory=dict)
    eval_on: list[str] = field(default_factory=list)
    jobs: int = 1
    device: str = "cpu"
    out: str | None = None
    tables: list[dict] = field(default_factory=lambda: [dict(t) for t in DEFAULT_TABLES])
    base_to_new: bool = False
    path: Path | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.name

    def dataset_root(self, dataset: str, root_override: str | Path | None = None) -> str | None:
        """Per-dataset root if the recipe names one, else --root, else the recipe's common root."""
        if dataset in self.roots:
            return self.roots[dataset]
        if root_override is not None:
            return str(root_override)
        return self.root

    def extract_options(self, *, test_only: bool = False) -> dict[str, Any]:
        """Keyword arguments for ExtractSpec.from_kwargs (views default to the recipe's shots/seeds)."""
        opts = dict(self.extract)
        if test_only:  # evaluation-only datasets (eval_on): just the test split, no views
            opts["splits"] = ["test"]
            opts["views"] = 0
            opts.pop("view_shots", None)
            opts.pop("seeds", None)
            opts.pop("all_views", None)
        else:
            opts.setdefault("view_shots", list(self.shots))
            opts.setdefault("seeds", list(self.seeds))
        for k in ("splits", "view_shots", "seeds"):
            if k in opts:
                opts[k] = tuple(opts[k])
        return opts


MAX_RECIPE_BYTES = 1 << 20


# -- loading ----------------------------------------------------------------------------------------------------
def _cut(text: str, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = 120) -> str:
    """repr of a user value, cut so an error line never echoes a huge value back."""
    return short_repr(value, limit)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if not path.is_absolute() and (Path("recipes") / path.name).is_file() and path.parent == Path("."):
            hint = f" (did you mean recipes/{path.name}?)"
        raise FeatbenchError(f"{path}: recipe file not found{hint}")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise FeatbenchError(f"{path}: {path.stat().st_size} bytes; a recipe is a small YAML file (at most "
                             f"{MAX_RECIPE_BYTES >> 20} MiB)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FeatbenchError(f"{path}: a recipe must be UTF-8 text") from None
    data = safe_yaml_load(text, str(path))
    return validate(data, source=path)


def _unknown(key: str, allowed, source, prefix: str = "") -> FeatbenchError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
    return FeatbenchError(f"{source}: unknown key '{prefix}{_cut(key)}'{hint}")


def _check_fields(data: dict, schema: dict[str, Field], source, prefix: str = "") -> None:
    for key in data:
        if not isinstance(key, str) or key not in schema:
            raise _unknown(str(key), schema, source, prefix)
    for key, spec in schema.items():
        if key not in data:
            if spec.required:
                raise FeatbenchError(f"{source}: missing required key '{prefix}{key}' ({spec.doc})")
            continue
        problem = spec.check(data[key])
        if problem:
            raise FeatbenchError(f"{source}: key '{prefix}{key}' {problem} (got {_short(data[key])}, {_type_name(data[key])})")


def validate(data: Any, source: str | Path = "<recipe>") -> Recipe:
    """Check a parsed recipe against the schema and the registries; return a :class:`Recipe`."""
    if not isinstance(data, dict):
        raise FeatbenchError(f"{source}: a recipe must be a YAML mapping of keys (got {_type_name(data)})")
    _check_fields(data, SCHEMA, source)
    if "extract" in data:
        _check_fields(data["extract"], EXTRACT_SCHEMA, source, prefix="extract.")
        tr = data["extract"].get("train_rows")
        if tr is not None and tr not in ("all", "fewshot"):
            raise FeatbenchError(f"{source}: key 'extract.train_rows' must be all or fewshot (got {tr!r})")

    known_ds = list_datasets()
    for key in ("datasets", "eval_on"):
        for name in data.get(key, []):
            if name not in known_ds:
                close = difflib.get_close_matches(name, known_ds, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known_ds)}"
                raise FeatbenchError(f"{source}: key '{key}' names unknown dataset '{_cut(name)}'{hint}")
    for name in data.get("roots", {}):
        if name not in data["datasets"] and name not in data.get("eval_on", []):
            raise FeatbenchError(f"{source}: key 'roots.{name}' names a dataset the recipe does not use")
    known_heads = list_heads()
    for name in data["heads"]:
        if name not in known_heads and not is_module_path(name):
            close = difflib.get_close_matches(name, known_heads, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known_heads)}"
            raise FeatbenchError(f"{source}: key 'heads' names unknown head '{_cut(name)}'{hint}")
    for key in ("sets", "grids"):
        for name in data.get(key, {}):
            head = name.rsplit(".", 1)[0]
            if head not in data["heads"]:
                raise FeatbenchError(f"{source}: key '{key}.{_cut(name)}' is for head '{_cut(head)}', which the recipe's "
                                     f"heads ({', '.join(data['heads'])}) do not include")
    for key in ("sets", "grids"):
        for name in data.get(key, {}):
            head, param = name.rsplit(".", 1)
            names = _head_param_names(head)
            if names is not None and param not in names:
                raise FeatbenchError(f"{source}: key '{key}.{_cut(name)}': head '{head}' has no parameter '{_cut(param)}'; "
                                     f"it has: {', '.join(sorted(names))}")
            values = data[key][name] if key == "grids" else [data[key][name]]
            problem = _value_problem(head, param, values)
            if problem:
                raise FeatbenchError(f"{source}: key '{key}.{name}': {problem}")
    if set(data.get("eval_on", [])) & set(data["datasets"]):
        raise FeatbenchError(f"{source}: key 'eval_on' repeats a dataset from 'datasets'")
    if data.get("base_to_new") and ("eval_on" in data or "tables" in data):
        raise FeatbenchError(f"{source}: key 'base_to_new' writes its own Base / New / H table and takes no "
                             "'eval_on' or 'tables'; remove them")
    for t in data.get("tables", []):
        for name in t.get("datasets", []):
            if name not in data["datasets"] and name not in data.get("eval_on", []):
                raise FeatbenchError(f"{source}: key 'tables' keeps dataset '{name}', which the recipe does not use")

    kwargs = {k: v for k, v in data.items()}
    kwargs.setdefault("name", Path(str(source)).stem if source != "<recipe>" else "recipe")
    recipe = Recipe(**kwargs)
    recipe.path = Path(source) if source != "<recipe>" else None
    return recipe


def _value_problem(head: str, param: str, values: list) -> str | None:
    """The first value that breaks the head's typed declaration (Head.hyperparams), as an error phrase."""
    try:
        cls = get_head_class(head)
    except Exception:
        return None  # checked again at run time
    for v in values:
        try:
            check_params(cls, {param: v})
        except FeatbenchError as err:
            return str(err)
    return None


def _head_param_names(head: str) -> list[str] | None:
    """The head's parameter names, or None where its module cannot be imported here (checked again at run)."""
    try:
        return list(get_head_class(head).param_names())
    except Exception:
        return None


def describe_schema() -> str:
    """The schema as text (for docs and `--help`)."""
    lines = ["top-level keys:"]
    lines += [f"  {k}{' (required)' if f.required else ''}: {f.doc}" for k, f in SCHEMA.items()]
    lines.append("extract: keys:")
    lines += [f"  {k}: {f.doc}" for k, f in EXTRACT_SCHEMA.items()]
    return "\n".join(lines)


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
        raise FeatbenchError(f"--datasets {','.join(names)}: {unknown[0]!r} is not in the recipe's datasets "
                             f"({', '.join(recipe.datasets)})")
    return dataclasses.replace(recipe, datasets=[d for d in recipe.datasets if d in names],
                               roots={k: v for k, v in recipe.roots.items() if k in names or k in recipe.eval_on})


def check_recipe(recipe: Recipe, *, root: str | Path | None = None, only_fit: bool = False) -> list[str]:
    """What ``run --check`` verifies beyond the schema, without running anything: every dataset's data root
    (unless ``only_fit``), the weights (found locally, or downloadable), the existing caches. Returns report
    lines; raises FeatbenchError with every problem found, one per clause."""
    lines, problems = [], []
    caches = cache_paths(recipe)
    need_data = []
    for ds in [*recipe.datasets, *recipe.eval_on]:
        if caches[ds].is_file():
            lines.append(f"  {ds}: cache {caches[ds]} exists (reused when its extraction covers the recipe's)")
            continue
        if only_fit:
            problems.append(f"{ds}: cache {caches[ds]} not found (--only-fit)")
            continue
        need_data.append(ds)
        ds_root = recipe.dataset_root(ds, root)
        if ds_root is None:
            problems.append(f"{ds}: no data root (pass --root DATA or set 'root' in the recipe)")
            continue
        base = Path(ds_root).expanduser()
        if not base.is_dir():
            problems.append(f"{ds}: data root {base} is not a folder")
            continue
        try:
            folder = locate_dataset_dir(dataset_info(ds), base)
        except FeatbenchError as err:
            problems.append(f"{ds}: {err}")
            continue
        lines.append(f"  {ds}: data in {folder}; will be extracted to {caches[ds]}")
    if need_data:
        try:
            lines.append(f"  weights: {weights_status(recipe.model, recipe.pretrained)}")
        except FeatbenchError as err:
            problems.append(f"weights: {err}")
    if problems:
        raise FeatbenchError(f"{recipe.path or 'recipe'}: --check found {len(problems)} problem(s): " + "; ".join(problems))
    return lines


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
        from featbench.extract import ExtractSpec, run_extract

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
            opts = recipe.extract_options(test_only=ds in recipe.eval_on)
            echo(f"extract {ds} ({recipe.model}/{recipe.pretrained}) from {ds_root}")
            spec = ExtractSpec.from_kwargs(ds, ds_root, model=recipe.model, pretrained=recipe.pretrained,
                                           cache_dir=recipe.cache_dir, progress=progress, overwrite=overwrite, **opts)
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


def write_reports(results_path: str | Path, out_dir: str | Path, *, tables_spec=DEFAULT_TABLES,
                  protocol: str | None = None, base_to_new: bool = False, plot_title: str | None = None) -> dict:
    """Write each table as CSV, LaTeX and Markdown plus the accuracy-vs-shots plot next to the results.

    With ``base_to_new`` the one table is Base / New / H (``table-base-to-new.*``) and there is no plot.
    A table spec's ``datasets`` keeps only those datasets (its Average is over them); ``name`` is its file stem.
    Returns {"tables": [paths...], "plots": [paths...], "markdown": {name: text}}.
    """
    out_dir = Path(out_dir)
    df = tables.load_results([results_path])
    written: dict[str, Any] = {"tables": [], "plots": [], "markdown": {}}
    suffix = {"csv": ".csv", "latex": ".tex", "markdown": ".md"}
    if base_to_new:
        t = aggregate_base_to_new(df, protocol=protocol)
        for fmt, ext in suffix.items():
            path = out_dir / ("table-base-to-new" + ext)
            path.write_text(tables.render(t, fmt), encoding="utf-8")
            written["tables"].append(path)
        written["markdown"]["table-base-to-new"] = tables.render(t, "markdown")
        return written
    for spec in tables_spec:
        metric = spec.get("metric", "acc")
        groups = tables.aggregate_by_encoder(df, metric=metric, rows=spec["rows"], cols=spec["cols"], protocol=protocol,
                                             datasets=spec.get("datasets"))
        stem = spec.get("name") or f"table-{spec['rows']}-by-{spec['cols']}" + ("" if metric == "acc" else f"-{metric}")
        for fmt, ext in suffix.items():
            path = out_dir / (stem + ext)
            path.write_text(tables.render_groups(groups, fmt), encoding="utf-8")
            written["tables"].append(path)
        written["markdown"][stem] = tables.render_groups(groups, "markdown")
    written["plots"] = plot_curves(df, out_dir, protocol=protocol, title=plot_title)
    return written


__all__ = ["Recipe", "SCHEMA", "EXTRACT_SCHEMA", "load_recipe", "validate", "run_recipe", "write_reports",
           "cache_paths", "describe_schema", "select_datasets", "check_recipe", "weights_status"]
