"""Recipes: one YAML file names a whole experiment (datasets × heads × shots × seeds × grids) and drives both
stages — extraction and the fit grid — then writes tables and plots next to the results.

Every key is checked against an explicit schema (:data:`SCHEMA`, :data:`EXTRACT_SCHEMA`): an unknown key, a
duplicated key or a value of the wrong type is an error naming the key and the file, never a silent default.
Relative paths in a recipe (``root``, ``roots``, ``cache_dir``, ``out``, a custom dataset's ``folder``,
``manifest``, ``templates`` and ``classnames``) are relative to the working directory the command runs in, like
the paths given on the command line.

View sets come from the heads: unless ``extract`` lists ``view_scales`` (or ``view_scale``) to override them,
a recipe extracts one view set per crop scale its heads' papers train on (``Head.paper_view_scale``, see
:func:`featbench.extract_spec.heads_view_scales`), so every head reproduces its own paper's procedure.

A ``datasets`` entry is a catalog name or a custom dataset, ``{name: N, folder: PATH}`` or
``{name: N, manifest: FILE}`` (optionally with ``templates`` and ``classnames``, a file or a list each), the
mappings of ``featbench extract --dataset folder|csv --name N``.
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
from featbench.extract_spec import ExtractSpec, dataset_name, heads_view_scales, parse_view_scale, parse_view_scales
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


CUSTOM_KEYS = ("name", "folder", "manifest", "templates", "classnames")


def _files_or_strings(v) -> bool:
    return (isinstance(v, str) and bool(v.strip())) or (isinstance(v, list) and bool(v)
                                                        and all(isinstance(x, str) and x.strip() for x in v))


def _custom_dataset(v) -> str | None:
    """A custom dataset entry's problem, or None: {name, folder | manifest, templates?, classnames?}."""
    unknown = [str(k) for k in v if k not in CUSTOM_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], CUSTOM_KEYS, n=1)
        return (f"entry {_short(v, 60)}: unknown key '{_cut(unknown[0])}'"
                + (f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(CUSTOM_KEYS)}"))
    if _str(v.get("name")):
        return f"entry {_short(v, 60)} needs name: N (it names the cache file and the result rows)"
    if ("folder" in v) == ("manifest" in v):
        return f"entry '{_cut(v['name'])}' needs exactly one of folder: PATH (class folders) or manifest: FILE (csv)"
    source = "folder" if "folder" in v else "manifest"
    if _str(v[source]):
        return f"entry '{_cut(v['name'])}': {source} must be a non-empty path string"
    for key in ("templates", "classnames"):
        if key in v and not _files_or_strings(v[key]):
            return f"entry '{_cut(v['name'])}': {key} must be a file path or a non-empty list of strings"
    try:
        dataset_name("folder", v["name"])
    except FeatbenchError as err:
        return f"entry '{_cut(v['name'])}': {str(err).replace('--name', 'name', 1)}"
    return None


def _datasets(v):
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of catalog names or {name: N, folder: PATH} / {name: N, manifest: FILE}"
    for entry in v:
        if isinstance(entry, dict):
            problem = _custom_dataset(entry)
            if problem:
                return problem
        elif not (isinstance(entry, str) and entry.strip()):
            return "entries must be dataset names or {name: N, folder: PATH} / {name: N, manifest: FILE} mappings"
    names = [e["name"] if isinstance(e, dict) else e for e in v]
    return "must not repeat values" if len(set(names)) != len(names) else None


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
    "view_scale": Field(_str, "one crop scale for every view, min,max (overrides the heads' paper scales)"),
    "view_scales": Field(_str, "one view set per crop scale, e.g. '0.5,1:0.08,1' (overrides the heads' paper "
                               "scales, which are the default: each head trains on its paper's crops)"),
    "skip_bad_images": Field(_bool, "skip unreadable images instead of failing"),
    "templates": Field(_str, "prompt templates file for every dataset (see `featbench extract --templates`)"),
}

#: the top-level keys of a recipe
SCHEMA: dict[str, Field] = {
    "name": Field(_str, "a short name (default: the file name)"),
    "description": Field(_str, "free text"),
    "datasets": Field(_datasets, "datasets to extract and fit: catalog names (featbench.datasets.list_datasets()) "
                                 "or {name: N, folder: PATH} / {name: N, manifest: FILE} (+ templates, classnames)",
                      True),
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
#: recipe reports name heads as their papers do (TaskRes, Tip-Adapter-F), as `featbench table` does
REPORT_NAMES = "paper"


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
    #: custom datasets by name: the entry's folder or manifest, templates and classnames
    custom: dict[str, dict] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.name

    def dataset_root(self, dataset: str, root_override: str | Path | None = None) -> str | None:
        """A custom dataset's folder (or its manifest's folder); else the per-dataset root if the recipe names
        one, else --root, else the recipe's common root."""
        if dataset in self.custom:
            entry = self.custom[dataset]
            return entry["folder"] if "folder" in entry else str(Path(entry["manifest"]).parent)
        if dataset in self.roots:
            return self.roots[dataset]
        if root_override is not None:
            return str(root_override)
        return self.root

    def view_scales(self) -> tuple[tuple[float, float], ...]:
        """The view sets extraction makes: the recipe's own where ``extract`` lists them, else one per crop
        scale its heads' papers train on (their union), so each head trains on its paper's crops."""
        if "view_scales" in self.extract:
            return parse_view_scales(self.extract["view_scales"])
        if "view_scale" in self.extract:
            return (parse_view_scale(self.extract["view_scale"]),)
        return heads_view_scales(self.heads)

    def extract_spec(self, dataset: str, root: str | Path | None, **run_options) -> ExtractSpec:
        """The :class:`ExtractSpec` of one dataset (``run_options``: progress, overwrite); a custom dataset
        extracts as ``--dataset folder|csv --name N`` with its entry's files."""
        opts = {**self.extract_options(test_only=dataset in self.eval_on), **run_options}
        common = dict(model=self.model, pretrained=self.pretrained, cache_dir=self.cache_dir)
        entry = self.custom.get(dataset)
        if entry is None:
            return ExtractSpec.from_kwargs(dataset, root, **common, **opts)
        for key in ("templates", "classnames"):
            if key in entry:
                opts[key] = entry[key]
        kind = "folder" if "folder" in entry else "csv"
        return ExtractSpec.from_kwargs(kind, self.dataset_root(dataset), name=dataset, manifest=entry.get("manifest"),
                                       **common, **opts)

    def extract_options(self, *, test_only: bool = False) -> dict[str, Any]:
        """Keyword arguments for ExtractSpec.from_kwargs (views default to the recipe's shots/seeds, view sets
        to the heads' paper crop scales)."""
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
            if opts.get("views", 10):  # no views: the default set, which leaves the cache's identity alone
                opts.pop("view_scale", None)
                opts["view_scales"] = self.view_scales()
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


#: the recipes shipped inside the package (the repository's top-level recipes/ is a link to this folder)
PACKAGED_RECIPES = Path(__file__).resolve().parent / "recipes_data"


def packaged_recipes() -> dict[str, Path]:
    """The recipes installed with featbench, by name (file stem): what ``featbench recipes`` lists."""
    return {p.stem: p for p in sorted(PACKAGED_RECIPES.glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """A recipe's description (else its name) for listings; a file that does not load says so."""
    try:
        recipe = load_recipe(path)
    except FeatbenchError as err:
        return f"(does not load: {err})"
    return recipe.description or recipe.name


def find_recipe(value: str | Path) -> Path:
    """A recipe file: ``value`` itself when it exists, else the packaged recipe it names, spelled as a name
    (``coop-rn50``), a file name (``coop-rn50.yaml``) or the repository's ``recipes/coop-rn50.yaml``, so the
    commands the docs print work outside a clone too. A local file always wins over a packaged one."""
    path = Path(value)
    if path.is_file():
        return path
    packaged = packaged_recipes()
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.parent in (Path("."), Path("recipes")) and stem in packaged:
        return packaged[stem]
    close = difflib.get_close_matches(stem, list(packaged), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise FeatbenchError(f"{path}: recipe file not found{hint}; give a recipe file, or a packaged recipe's name "
                         f"({', '.join(packaged)}; `featbench recipes` lists them)")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (or a packaged recipe by name, see :func:`find_recipe`)."""
    path = find_recipe(path)
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

    custom = {e["name"]: dict(e) for e in data["datasets"] if isinstance(e, dict)}
    data = {**data, "datasets": [e["name"] if isinstance(e, dict) else e for e in data["datasets"]]}
    known_ds = list_datasets()
    for key in ("datasets", "eval_on"):
        for name in data.get(key, []):
            if name not in known_ds and name not in custom:
                close = difflib.get_close_matches(name, known_ds, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known_ds)}"
                raise FeatbenchError(f"{source}: key '{key}' names unknown dataset '{_cut(name)}'{hint}")
    for name in data.get("roots", {}):
        if name not in data["datasets"] and name not in data.get("eval_on", []):
            raise FeatbenchError(f"{source}: key 'roots.{name}' names a dataset the recipe does not use")
        if name in custom:
            raise FeatbenchError(f"{source}: key 'roots.{name}': a custom dataset's entry gives its own folder or "
                                 "manifest; remove it from roots")
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
    recipe = Recipe(**kwargs, custom=custom)
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
    df = tables.load_results([results_path])
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
