"""`featbench published`: the numbers papers publish (the shipped ledger), with their sources. No torch."""

from __future__ import annotations

from typing import Optional

import typer

from featbench.cli.app import app, parse_int_list
from featbench.errors import FeatbenchError


@app.command("published")
def published_command(
    head: Optional[str] = typer.Option(None, "--head", help="A head's registry name, e.g. tip-adapter-f."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A dataset name, or 'average'."),
    model: Optional[str] = typer.Option(None, "--model", help="An open_clip model name, e.g. RN50 or ViT-B-16."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Weights, e.g. openai."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Comma-separated shot counts, e.g. 1,16 (zero-shot "
                                        "numbers stand for every count)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="few-shot | base-to-new | domain-generalisation"),
    format: str = typer.Option("markdown", "--format", "-f", help="markdown | csv (csv adds aggregation and notes)."),
) -> None:
    """List published numbers (top-1 %) with their source (paper, arXiv id) and where in it they stand."""
    from featbench import published

    if format not in published.FORMATS:
        raise FeatbenchError(f"--format must be one of {', '.join(published.FORMATS)}; got {format!r}")
    rows = published.read_ledger()
    _check_name("--head", head, {r.head for r in rows})
    _check_name("--dataset", dataset, {r.dataset for r in rows})
    _check_name("--model", model, {r.model for r in rows})
    picked = published.select(rows, head=head, dataset=dataset, model=model, pretrained=pretrained,
                              shots=parse_int_list(shots, "--shots") if shots else None, protocol=protocol)
    if not picked:
        raise FeatbenchError("no published numbers match these filters; `featbench published` lists them all")
    typer.echo(published.format_rows(picked, format), nl=False)


def _check_name(flag: str, value: str | None, known: set[str]) -> None:
    """A name the ledger has no row for is one line naming the closest one it has."""
    import difflib

    if value is None or value in known:
        return
    close = difflib.get_close_matches(value, sorted(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise FeatbenchError(f"{flag} {value}: the published-numbers ledger has no rows for it{hint} "
                         f"(it has {', '.join(sorted(known))})")
