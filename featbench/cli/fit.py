"""CLI commands (placeholder module; filled in by its owner)."""

from featbench.cli.app import app  # noqa: F401
