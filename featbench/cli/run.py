"""`featbench run RECIPE` (extraction + fit grid + tables + plots) and `featbench demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featbench.cli.app import app


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="A recipe YAML, e.g. recipes/coop-rn50.yaml.", show_default=False),
    root: Optional[Path] = typer.Option(None, "--root", help="Data root for every dataset (overrides the recipe's "
                                        "root; the recipe's per-dataset roots still win)."),
    only_fit: bool = typer.Option(False, "--only-fit", help="Skip extraction; the caches must exist."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: the recipe's out)."),
    check: bool = typer.Option(False, "--check", help="Only validate the recipe and print what it would run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run a recipe: extract (skipping up-to-date caches), fit the grid, write tables (csv/tex/md) and plots."""
    from featbench.recipes import load_recipe, run_recipe

    r = load_recipe(recipe)
    if check:
        n = len(r.datasets) * len(r.shots) * len(r.seeds)
        typer.echo(f"{recipe}: valid. {len(r.datasets)} dataset(s), heads {', '.join(r.heads)}, shots "
                   f"{','.join(map(str, r.shots))}, seeds {','.join(map(str, r.seeds))}, {r.protocol} protocol{', base-to-new' if r.base_to_new else ''} "
                   f"({n} dataset×shot×seed cells per head configuration); output {out or r.out_dir}")
        return
    written = run_recipe(r, root=root, only_fit=only_fit, out=out, progress=progress, echo=typer.echo)
    first = next(iter(written["markdown"].values()), "")
    typer.echo("")
    typer.echo(first.rstrip())
    typer.echo("")
    typer.echo(f"results: {written['results']}")
    for path in [*written["tables"], *written["plots"]]:
        typer.echo(f"wrote {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("featbench-demo"), "--out", "-o", help="Where the demo writes data, caches, "
                             "results, tables and the plot."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """The whole pipeline offline in about a minute: generated images, a tiny RANDOM-weight CLIP, five heads."""
    from featbench.demo import run_demo

    run_demo(out, progress=progress, echo=typer.echo)
