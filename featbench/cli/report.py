"""`featbench table` and `featbench plot`: result rows -> tables / figures.

No torch on this path: the commands import only pandas (tables) and matplotlib (plot), lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from featbench.cli.app import app, parse_int_list, parse_str_list
from featbench.errors import FeatbenchError


@app.command()
def table(
    results: List[Path] = typer.Argument(..., help="Result files (.jsonl) or directories of them.", show_default=False),
    format: str = typer.Option("markdown", "--format", "-f", help="csv | latex | markdown"),
    rows: str = typer.Option("dataset", "--rows", help="dataset | head | shots"),
    cols: str = typer.Option("shots", "--cols", help="shots | head | dataset | params (accuracy against trainable "
                             "parameters: heads as rows; --rows head: the average, --rows dataset: a block each)"),
    metric: str = typer.Option("acc", "--metric", help="acc | mean_per_class_recall"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Keep only rows of this protocol: paper | val | oracle."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Comma-separated heads (registry names or labels) to keep."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Comma-separated shot counts to keep, e.g. 1,16."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated datasets to keep."),
    model: Optional[str] = typer.Option(None, "--model", help="Keep only rows of this encoder model, e.g. RN50."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Keep only rows of these weights, e.g. openai."),
    decimals: int = typer.Option(2, "--decimals", help="Digits after the decimal point (0-10)."),
    standalone: bool = typer.Option(False, "--standalone", help="LaTeX only: wrap in a compilable document."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of printing to stdout."),
    force: bool = typer.Option(False, "--force", help="Let --out replace an existing file that is not a featbench table."),
    base_to_new: Optional[bool] = typer.Option(None, "--base-to-new/--no-base-to-new", help="Base / New / H table of `fit --base-to-new` rows (default: when the rows are all base/new rows)."),
    names: str = typer.Option("paper", "--names", help="paper (TaskRes, Tip-Adapter-F, ...) | registry (taskres, tip-adapter-f, ...)."),
    published: bool = typer.Option(False, "--published", help="Beside each cell, the number its paper publishes and ours - published (`featbench published` lists them)."),
    ci: bool = typer.Option(False, "--ci", help="Mean ± 95% CI half-width over seeds (t, n-1 df) instead of ± std."),
) -> None:
    """Mean ± std over seeds per cell, with an Average over datasets (only where every dataset has the cell).

    --rows head --cols shots prints the dataset-average per head and shot, with a rank column; --cols params
    adds each head's trainable parameter count (ELEVATER's parameter efficiency).
    Results of several encoders (model/pretrained) give one table per encoder, never an average across them.
    """
    from featbench import result_reader, tables

    if format not in tables.FORMATS:
        raise FeatbenchError(f"--format must be one of {', '.join(tables.FORMATS)}; got {format!r}")
    tables.check_decimals(decimals)
    tables.check_names(names)
    if out is not None:
        from featbench.outputs import guard_output, looks_like_table

        guard_output(out, results, flag="--out", force=force, looks_ours=looks_like_table, what="table")
    from featbench import b2n_table  # lazy, like tables: pandas only when a table is asked for

    df = result_reader.load_results(results, fields=result_reader.TABLE_FIELDS)
    check_name_flags(df, heads=heads, datasets=datasets)
    if base_to_new is None:
        base_to_new = b2n_table.is_base_to_new(df)
    if base_to_new and cols == tables.PARAMS:
        raise FeatbenchError("--cols params: not for base-to-new rows; drop --base-to-new or use --cols shots")
    layout = dict(build=b2n_table.aggregate_base_to_new) if base_to_new else dict(rows=rows, cols=cols)
    groups = tables.aggregate_by_encoder(
        df, metric=metric, protocol=protocol, **layout,
        heads=parse_str_list(heads) if heads else None,
        shots=parse_int_list(shots, "--shots") if shots else None,
        datasets=parse_str_list(datasets) if datasets else None,
        model=model, pretrained=pretrained, names=names, published=published,
    )
    if ci:
        from featbench.table_model import with_ci

        groups = [(enc, with_ci(t)) for enc, t in groups]
    text = tables.render_groups(groups, format, decimals=decimals, standalone=standalone)
    if out is None:
        typer.echo(text, nl=False)
    else:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as err:
            raise FeatbenchError(f"--out {out}: cannot write the table ({err.strerror or err}); give a writable path") from None
        typer.echo(f"wrote {out}", err=True)


@app.command()
def plot(
    results: List[Path] = typer.Argument(..., help="Result files (.jsonl) or directories of them.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="A directory (gets accuracy-vs-shots.png/.pdf) or a "
                             "stem ending in .png/.pdf (both files are written)."),
    metric: str = typer.Option("acc", "--metric", help="acc | mean_per_class_recall"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Keep only rows of this protocol: paper | val | oracle."),
    title: Optional[str] = typer.Option(None, "--title", help="A title line above the panels."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Comma-separated heads (registry names, paper names or labels) to draw."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated datasets to draw."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Comma-separated shot counts to draw, e.g. 1,2,4."),
    names: str = typer.Option("paper", "--names", help="paper (TaskRes, Tip-Adapter-F, ...) | registry (taskres, ...)."),
    x: str = typer.Option("shots", "--x", help="shots (curves per dataset) | params (accuracy against trainable "
                          "parameters, log axis: a panel per shot count, a point per head; writes accuracy-vs-params)"),
) -> None:
    """Accuracy-vs-shots curves: one panel per dataset plus Average, one line per head, ±std bands.

    Each head keeps one colour and marker in every figure (derived from its name, not the plot's order).
    """
    from featbench import result_reader, tables
    from featbench.plots import plot_curves

    tables.check_names(names)
    df = result_reader.load_results(results, fields=result_reader.TABLE_FIELDS)
    check_name_flags(df, heads=heads, datasets=datasets)
    picked = dict(heads=parse_str_list(heads) if heads else None,
                  datasets=parse_str_list(datasets) if datasets else None,
                  shots=parse_int_list(shots, "--shots") if shots else None)
    for path in plot_curves(df, out, metric=metric, protocol=protocol, title=title, names=names, x=x, **picked):
        typer.echo(f"wrote {path}")


@app.command()
def compare(
    results: List[Path] = typer.Argument(..., help="Result files (.jsonl) or directories of them.", show_default=False),
    heads: str = typer.Option(..., "--heads", help="Two heads A,B (registry names or table labels): shows B - A."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated datasets to keep."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Comma-separated shot counts to keep."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Keep only rows of this protocol."),
    top: int = typer.Option(10, "--top", help="How many classes to list as largest gains and losses (1-1000)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="The folder given to `fit "
                                               "--save-predictions`: one-seed cells get the exact paired bootstrap."),
    bootstrap: int = typer.Option(10_000, "--bootstrap", help="Bootstrap resamples (100-1000000; fixed RNG seed)."),
) -> None:
    """B against A: a significance test of the accuracy difference first, then per-class gains and losses.

    Rows are matched on (encoder, dataset, shots, seed). Cells with 2+ matched seeds: paired t test over the
    seeds (df = seeds - 1). One seed: bootstrap over test images, paired and exact from saved predictions
    (--predictions DIR, plus McNemar's exact test), else from per-class counts with A and B resampled
    independently (said so in the output). Overall per encoder: paired t over all matched differences. 95% CIs,
    two-sided p; the same command gives the same numbers.
    """
    from featbench import perclass, result_reader, significance

    pair = parse_str_list(heads)
    if len(pair) != 2:
        raise FeatbenchError(f"--heads {heads}: give exactly two heads, e.g. --heads zeroshot,taskres")
    if not 1 <= top <= 1000:
        raise FeatbenchError(f"--top {top}: give a number from 1 to 1000")
    df = result_reader.load_results(results, fields=result_reader.PER_CLASS_FIELDS + ("predictions",))
    check_name_flags(df, heads=heads, datasets=datasets)
    picked = dict(datasets=parse_str_list(datasets) if datasets else None,
                  shots=parse_int_list(shots, "--shots") if shots else None, metric_protocol=protocol)
    tested = significance.verdict(df, pair[0], pair[1], predictions=predictions, resamples=bootstrap, **picked)
    comps = perclass.compare(df, pair[0], pair[1], **picked)
    typer.echo(significance.render(tested) + "\n" + perclass.render(comps, pair[0], pair[1], top=top), nl=False)


def check_name_flags(df, *, heads: str | None, datasets: str | None) -> None:
    """--heads and --datasets name what the results hold: an unknown name is one line with the closest one,
    before any filtering leaves nothing (a head is its registry name, its paper name or a table label)."""
    from featbench.table_model import display_name

    present = sorted({str(h) for h in df["head"]})
    _check_names("--heads", heads, present, {n for h in present for n in (h, display_name(h))},
                 prefixes=tuple(f"{n} (" for h in present for n in (h, display_name(h))))
    _check_names("--datasets", datasets, sorted({str(d) for d in df["dataset"]}), set())


def _check_names(flag: str, value: str | None, present: list[str], aliases: set[str], prefixes=()) -> None:
    import difflib

    for name in parse_str_list(value) if value else []:
        if name in present or name in aliases or name.startswith(prefixes):  # a label: "taskres (alpha=0.5)"
            continue
        close = difflib.get_close_matches(name, sorted(set(present) | aliases), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise FeatbenchError(f"{flag} {name}: no rows for this {flag[2:-1]} in the results{hint} (they have "
                             f"{', '.join(present) or 'none'})")
