"""`featbench datasets` and `featbench heads [NAME]`: what the registries know, without importing torch."""

from __future__ import annotations

import inspect
from typing import Optional

import typer

from featbench.cli.app import app
from featbench.errors import FeatbenchError
from featbench.heads import BUILT_IN, get_head_class, head_origin, list_heads, plugin_problems

STANDARD_SHOTS = (1, 2, 4, 8, 16)


@app.command("datasets")
def datasets_command() -> None:
    """List the dataset names --dataset accepts, with folder and prompt template."""
    from featbench.datasets import dataset_info, list_datasets

    rows = [("name", "group", "folder under --root", "splits", "prompt templates")]
    for name in list_datasets():
        info = dataset_info(name)
        folder = info.folder or "(your --root)"
        template = info.templates[0] if len(info.templates) == 1 else f"{len(info.templates)} templates"
        rows.append((name, info.group, folder, ",".join(info.splits), template))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join(f"{c:{w}s}" for c, w in zip(r, widths)) + "  " + r[-1])


@app.command("recipes")
def recipes_command() -> None:
    """List the recipes installed with featbench: `featbench run NAME` runs one, `--check` first."""
    from featbench.recipes import packaged_recipes, recipe_summary

    found = packaged_recipes()
    width = max(len(n) for n in found)
    for name, path in found.items():
        typer.echo(f"{name:{width}s}  {recipe_summary(path)}")
    typer.echo(f"\n`featbench run NAME --root DATA --check` checks one; the files are in {next(iter(found.values())).parent}")


@app.command("heads")
def heads_command(
    name: Optional[str] = typer.Argument(None, help="A head to describe: hyperparameters, types, bounds, paper "
                                         "defaults per dataset and the search space of protocol val."),
) -> None:
    """List the heads --heads accepts and the paper each follows; `featbench heads NAME` describes one."""
    if name is None:
        _list_heads()
        return
    cls = get_head_class(name)  # an unknown name: one line with the closest names
    origin = head_origin(name)
    typer.echo(describe_head(name, cls, origin="" if origin == BUILT_IN else origin))


def _list_heads() -> None:
    """One line per head (plugins with their distribution; a broken one says why), then refused plugins."""
    for head in list_heads():
        typer.echo(_head_line(head))
    for plugin, problem in plugin_problems().items():
        typer.echo(f"featbench: warning: plugin head '{plugin}' ignored: {problem}", err=True)
    typer.echo("\n`featbench heads NAME` shows a head's hyperparameters, paper defaults and search space.")


def _head_line(head: str) -> str:
    """`NAME  paper or first docstring line`, plus `[ORIGIN]` for a head that is not built in."""
    origin = head_origin(head)
    tag = "" if origin == BUILT_IN else f"  [{origin}]"
    try:
        cls = get_head_class(head)
    except FeatbenchError as err:  # a broken plugin must not hide the heads that work
        return f"{head:16s} BROKEN: {err}"
    return f"{head:16s} {_about(cls)}{tag}"


def _about(cls) -> str:
    return cls.paper or ((cls.__doc__ or "").strip().splitlines() or [cls.__qualname__])[0]


def _param_rows(cls) -> list[tuple[str, str, str, str]]:
    """(name, type and bounds, default, meaning) per __init__ parameter; the declared Param where there is one,
    else the type of the default value (heads that declare nothing still get a useful listing)."""
    sig = inspect.signature(cls.__init__)
    declared = dict(getattr(cls, "hyperparams", None) or {})
    out = []
    for pname in cls.param_names():
        default = sig.parameters[pname].default
        shown_default = "required" if default is inspect.Parameter.empty else repr(default)
        spec = declared.get(pname)
        if spec is not None and hasattr(spec, "describe"):
            kind, doc = spec.describe(), getattr(spec, "doc", "") or ""
        else:
            kind = "?" if default in (None, inspect.Parameter.empty) else type(default).__name__
            doc = ""
        if pname in getattr(cls, "runtime_params", ()):
            doc = (doc + " " if doc else "") + "(runtime setting, not a hyperparameter)"
        out.append((pname, kind, shown_default, doc))
    return out


def _paper_defaults(cls) -> tuple[list[str], list[str]]:
    """Per shot count, the defaults most datasets share; then one line per dataset (and shots) that differs.
    A parameter a dataset's defaults leave out means "the constructor default" and is not listed."""
    from featbench.datasets import list_datasets

    table: dict[tuple[str, int], dict] = {}
    for ds in list_datasets():
        for k in STANDARD_SHOTS:
            try:
                table[(ds, k)] = dict(cls.paper_defaults(ds, k) or {})
            except Exception:  # a head whose defaults need more context: say nothing rather than guess
                table[(ds, k)] = {}
    common: dict[int, dict] = {}
    for k in STANDARD_SHOTS:
        per = [table[(ds, k)] for ds in list_datasets()]
        keys = sorted({p for d in per for p in d})
        common[k] = {}
        for p in keys:
            values = [repr(d[p]) for d in per if p in d]
            top = max(set(values), key=values.count)
            if values.count(top) * 2 > len(per):
                common[k][p] = next(d[p] for d in per if p in d and repr(d[p]) == top)
    shared = []
    for text, shots in _group_by_text({k: ", ".join(f"{p}={v!r}" for p, v in common[k].items()) for k in STANDARD_SHOTS}):
        if text:
            shared.append(f"  {_shots_label(shots)}{text}")
    lines = []
    for ds in list_datasets():
        texts = {}
        for k in STANDARD_SHOTS:
            d = table[(ds, k)]
            texts[k] = ", ".join(f"{p}={v!r}" for p, v in d.items() if repr(v) != repr(common[k].get(p, object())))
        for text, shots in _group_by_text(texts):
            if text:
                lines.append(f"  {ds} {_shots_label(shots)}{text}")
    return shared, lines


def _group_by_text(texts: dict[int, str]) -> list[tuple[str, list[int]]]:
    groups: dict[str, list[int]] = {}
    for k, text in texts.items():
        groups.setdefault(text, []).append(k)
    return list(groups.items())


def _shots_label(shots: list[int]) -> str:
    return "" if len(shots) == len(STANDARD_SHOTS) else f"({','.join(map(str, shots))}-shot): "


def describe_head(name: str, cls, origin: str = "") -> str:
    """The text of `featbench heads NAME`; ``origin`` names a head's source when it is not built in."""
    out = [f"{name}: {_about(cls)}"]
    if origin:
        out.append(f"from: {origin} ({cls.__module__}:{cls.__qualname__})")
    out.append("")
    rows = _param_rows(cls)
    out.append("hyperparameters (set with --set/--grid " + f"{name}.PARAM=VALUE):")
    if rows:
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        out += [f"  {r[0]:{w[0]}s}  {r[1]:{w[1]}s}  default {r[2]:{w[2]}s}  {r[3]}".rstrip() for r in rows]
    else:
        out.append("  none")
    shared, per_dataset = _paper_defaults(cls)
    out.append("")
    if shared or per_dataset:
        out.append("paper defaults (every dataset unless listed below):")
        out += shared or ["  the constructor defaults above"]
        if per_dataset:
            out.append("where a dataset differs:")
            out += per_dataset
    else:
        out.append("paper defaults: the constructor defaults above, for every dataset and shot count")
    out.append("")
    space = dict(getattr(cls, "search_space", {}) or {})
    if space:
        out.append("protocol val/oracle searches: " + "; ".join(f"{k} in {v}" for k, v in space.items()))
    else:
        out.append("protocol val/oracle searches: nothing beyond the head's own procedure")
    if getattr(cls, "searches_internally", False):
        out.append("its paper's own search runs on the few-shot val split under every protocol")
    flags = [f for f, on in (("needs text features", cls.needs_text), ("uses augmented views", cls.uses_views),
                             ("reads pre-projection features", cls.feature_kind != "features")) if on]
    if flags:
        out.append("needs: " + ", ".join(flags))
    return "\n".join(out)
