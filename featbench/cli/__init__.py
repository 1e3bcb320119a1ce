"""Command-line interface. Thin: parses and validates flags, then calls the library.

Each command group lives in its own module and registers itself on `app` when imported; command
modules import torch/open_clip/h5py only inside the command bodies so `featbench --help` stays fast.
"""

from __future__ import annotations

from featbench.cli.app import app
from featbench.cli import extract as _extract  # noqa: F401  (extract, info, ls, merge)
from featbench.cli import merge as _merge  # noqa: F401  (merge)
from featbench.cli import catalog as _catalog  # noqa: F401  (datasets, heads)
from featbench.cli import fit as _fit  # noqa: F401  (fit, fewshot)
from featbench.cli import report as _report  # noqa: F401  (table, plot)
from featbench.cli import run as _run  # noqa: F401  (run, demo)
from featbench.cli import published as _published  # noqa: F401  (published)


def main() -> None:
    app()


__all__ = ["app", "main"]
