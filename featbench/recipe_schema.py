"""The recipe file: its schema, the checks every key passes where it enters, and the packaged recipes.

Every key is checked against an explicit schema (:data:`SCHEMA`, :data:`EXTRACT_SCHEMA`): an unknown key, a
duplicated key or a value of the wrong type is an error naming the key and the file, never a silent default.
Relative paths in a recipe (``root``, ``roots``, ``cache_dir``, ``out``, a custom dataset's ``folder``,
``manifest``, ``templates`` and ``classnames``) are relative to the working directory the command runs in, like
the paths given on the command line. Running a recipe is :mod:`featbench.recipes`.

A ``datasets`` entry is a catalog name or a custom dataset, ``{name: N, folder: PATH}`` or
``{name: N, manifest: FILE}`` (optionally with ``templates`` and ``classnames``, a file or a list each), the
mappings of ``featbench extract --dataset folder|csv --name N``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from featbench.datasets import list_datasets
from featbench.devices import DEVICE_PATTERN
from featbench.errors import FeatbenchError, short_repr
from featbench.extract_spec import ExtractSpec, dataset_name, heads_view_scales, parse_view_scale, parse_view_scales
from featbench.heads import get_head_class, is_module_path, list_heads
from featbench.heads.spec import check_params
from featbench.yamlsafe import safe_yaml_load


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


