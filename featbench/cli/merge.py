"""`featbench merge PARTS... --out CACHE`: join part caches (e.g. one per torchrun rank) into one cache."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from featbench.cli.app import app


@app.command("merge")
def merge(
    parts: List[Path] = typer.Argument(..., help="Part caches to merge (same extraction, disjoint or identical rows)."),
    out: Path = typer.Option(..., "--out", help="Path of the merged cache."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    remove_parts: bool = typer.Option(False, "--remove-parts", help="Delete the part files after a successful merge."),
) -> None:
    """Merge part caches into one schema-v1 cache: rows in canonical order, deduplicated, fingerprints checked."""
    from featbench.merge import merge_parts

    path = merge_parts(parts, out, overwrite=overwrite)
    if remove_parts:
        for p in parts:
            Path(p).unlink(missing_ok=True)
    typer.echo(str(path))
