"""`featbench datasets` and `featbench heads`: what the registries know, without importing torch."""

from __future__ import annotations

import typer

from featbench.cli.app import app


@app.command("datasets")
def datasets_command() -> None:
    """List the dataset names --dataset accepts, with folder and prompt template."""
    from featbench.datasets import dataset_info, list_datasets

    for name in list_datasets():
        info = dataset_info(name)
        folder = info.folder or "(your --root)"
        template = info.templates[0] if len(info.templates) == 1 else f"{len(info.templates)} templates"
        typer.echo(f"{name:16s} {info.group:17s} {folder:22s} splits={','.join(info.splits):15s} {template}")


@app.command("heads")
def heads_command() -> None:
    """List the heads --heads accepts and the paper each follows."""
    from featbench.heads import get_head_class, list_heads

    for name in list_heads():
        cls = get_head_class(name)
        about = cls.paper or (cls.__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:16s} {about}")
