"""`featbench run RECIPE` (extraction + fit grid + tables + plots) and `featbench demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featbench.cli.app import app, one_line
from featbench.devices import check_torch_install
from featbench.demo import DEFAULT_OUT as DEMO_OUT


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="A recipe YAML, or a packaged recipe's name (`featbench recipes` lists "
                                  "them), e.g. coop-rn50.", show_default=False),
    root: Optional[Path] = typer.Option(None, "--root", help="Data root for every dataset (overrides the recipe's "
                                        "root; the recipe's per-dataset roots still win)."),
    only_fit: bool = typer.Option(False, "--only-fit", help="Skip extraction; the caches must exist."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: the recipe's out)."),
    check: bool = typer.Option(False, "--check", help="Only check the recipe, its data, weights and caches, and "
                               "print what it would run and the view sets it would extract (nothing is extracted "
                               "or fitted); one problem per line."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated subset of the recipe's "
                                           "datasets to run (the tables cover every dataset in the results file)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild caches whose extraction cannot serve the "
                                   "recipe (a cache covering more views/seeds/splits is reused without it)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    max_cells: int = typer.Option(10_000, "--max-cells", help="Refuse a fit grid of more cells than this (the "
                                  "count is printed before fitting); raise it for a bigger sweep."),
) -> None:
    """Run a recipe: extract (reusing caches that cover it), fit the grid, write tables (csv/tex/md) and plots."""
    check_torch_install()
    from featbench.cli.app import parse_str_list
    from featbench.recipes import load_recipe, run_recipe, select_datasets

    r = load_recipe(recipe)
    if datasets is not None:
        names = parse_str_list(datasets)
        if not names:
            from featbench.errors import FeatbenchError

            raise FeatbenchError("--datasets is empty; name one or more of the recipe's datasets")
        r = select_datasets(r, names)
    if check:
        _check(recipe, r, root=root, only_fit=only_fit, overwrite=overwrite, out=out)
        return
    written = run_recipe(r, root=root, only_fit=only_fit, out=out, progress=progress, echo=typer.echo,
                         overwrite=overwrite, max_cells=max_cells)
    first = next(iter(written["markdown"].values()), "")
    typer.echo("")
    typer.echo(first.rstrip())
    typer.echo("")
    typer.echo(f"results: {written['results']}")
    for path in [*written["tables"], *written["plots"]]:
        typer.echo(f"wrote {path}")


def _check(given: Path, r, *, root, only_fit: bool, overwrite: bool, out) -> None:
    """`run --check`: what the recipe would run, or every problem on its own line (exit code 2)."""
    from featbench.recipes import CheckProblems, check_recipe

    try:
        lines = check_recipe(r, root=root, only_fit=only_fit, overwrite=overwrite)
    except CheckProblems as err:
        typer.echo(f"featbench: error: {err.source}: --check found {len(err.problems)} problem(s):", err=True)
        for problem in err.problems:
            typer.echo(f"  - {one_line(problem)}", err=True)
        raise typer.Exit(code=2) from None
    n = len(r.datasets) * len(r.shots) * len(r.seeds)
    typer.echo(f"{given}: valid. {len(r.datasets)} dataset(s), heads {', '.join(r.heads)}, shots "
               f"{','.join(map(str, r.shots))}, seeds {','.join(map(str, r.seeds))}, {r.protocol} protocol"
               f"{', base-to-new' if r.base_to_new else ''} ({n} dataset×shot×seed cells per head configuration); "
               f"output {out or r.out_dir}")
    for line in lines:
        typer.echo(line)


@app.command()
def demo(
    out: Path = typer.Option(Path(DEMO_OUT), "--out", "-o", help="Where the demo writes data, caches, "
                             "results, tables and the plot."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """The whole pipeline offline in about a minute: generated images, a tiny RANDOM-weight CLIP, five heads."""
    check_torch_install()
    from featbench.demo import run_demo

    run_demo(out, progress=progress, echo=typer.echo)
