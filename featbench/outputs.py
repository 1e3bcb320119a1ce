"""Guards for files featbench writes over: never replace an input or a file that is not one of ours.

`featbench table X.jsonl -o X.jsonl` once replaced the results file with its own table. Every command that
writes a report file asks ``guard_output`` first: the output may not be one of the inputs, and an existing
file is overwritten only when it looks like what that command writes (or with ``--force``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from featbench.errors import FeatbenchError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def input_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files behind a list of inputs (directories expand to their *.jsonl, as the readers do)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    return files


def guard_output(out: Path, inputs: Iterable[str | os.PathLike], *, flag: str, force: bool,
                 looks_ours: Callable[[str], bool], what: str) -> None:
    """Refuse (one line) to write `out` over an input, or over an existing file that is not a `what`."""
    out = Path(out)
    for f in input_files(inputs):
        if _same_file(out, f) or out.resolve() == f.resolve():
            raise FeatbenchError(f"{flag} {out} is one of the input files; write the {what} to another path")
    if out.is_dir():
        raise FeatbenchError(f"{flag} {out} is a directory; pass a file path for the {what}")
    if not out.exists() or force:
        return
    try:
        head = out.read_bytes()[:65536].decode("utf-8")
    except (OSError, UnicodeDecodeError):
        head = None
    if head is None or (head.strip() and not looks_ours(head)):
        raise FeatbenchError(f"{flag} {out} exists and is not a featbench {what}; pass --force to replace it "
                             f"or choose another path")


def ensure_folder(folder: Path, label: str, hint: str) -> None:
    """Create an output folder, or raise one clear line (`label`: what to call it, `hint`: the fix) before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FeatbenchError(f"{label}: is a file, not a folder; {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FeatbenchError(f"{label}: cannot create the folder ({err.strerror or err}); {hint}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FeatbenchError(f"{label}: the folder is not writable; {hint}")


def looks_like_table(text: str) -> bool:
    """True for what `featbench table` writes (markdown, LaTeX or CSV), False for results and other files."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if first.lstrip().startswith("{"):
        return False  # JSON lines: a results file
    if first.startswith(("| ", "### Encoder: ")):  # markdown; one table per encoder when there are several
        return True
    if first.startswith((r"% requires \usepackage{booktabs}", r"\documentclass")):
        return True
    import csv

    try:
        header = next(csv.reader([first]))
    except (csv.Error, StopIteration):
        return False
    return any(cell.endswith(" mean") for cell in header)


__all__ = ["guard_output", "looks_like_table", "input_files", "ensure_folder"]
