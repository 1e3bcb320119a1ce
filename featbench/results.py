"""Result rows: the schema, their identity, and the append-only JSON-lines file that makes sweeps resumable.

One JSON object per line. A sweep killed mid-write leaves at most one partial last line: ``read_rows``
ignores it and ``append_rows`` cuts it off before writing, so rerunning the same command resumes
cleanly. Only one process (the runner's parent) writes; every row is flushed and fsync'ed before the
next cell's row so an interruption loses at most the cell in flight.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from featbench.errors import FeatbenchError

#: every row carries these fields (docs/PLAN.md "Result rows"), in this order
ROW_FIELDS = (
    "dataset", "source_dataset", "model", "pretrained", "fingerprint", "cache", "head", "params", "selected",
    "protocol", "shots", "seed", "acc", "mean_per_class_recall", "n_test", "fit_seconds", "views_used", "notes",
    "featbench_version", "timestamp",
)
#: the fields that identify a row: two rows with equal keys are the same experiment (resume skips it)
KEY_FIELDS = ("fingerprint", "source_dataset", "dataset", "head", "params", "protocol", "shots", "seed")


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of a hyperparameter value (numpy scalars/arrays, tuples, paths, ...)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # numpy scalar
    shape = getattr(value, "shape", None)
    if callable(item) and shape == ():
        return jsonable(item())
    if shape is not None:  # an array-valued hyperparameter (e.g. a TaskRes base matrix): record its shape only
        return f"<array shape={tuple(int(s) for s in shape)}>"
    return str(value)


def _canon(value: Any) -> Any:
    """Normalise for identity: 1 and 1.0 are the same hyperparameter value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON used in row identities."""
    return json.dumps(_canon(jsonable(value)), sort_keys=True, separators=(",", ":"))


def row_key(row: Mapping) -> tuple:
    """The identity of a row: (fingerprint, source dataset, dataset, head, params JSON, protocol, shots, seed)."""
    return (
        str(row["fingerprint"]),
        str(row.get("source_dataset") or row["dataset"]),
        str(row["dataset"]),
        str(row["head"]),
        canonical_json(row.get("params") or {}),
        str(row["protocol"]),
        int(row["shots"]),
        int(row["seed"]),
    )


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of a results file ([] when it does not exist); a partial last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows: list[dict] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        last = i == len(lines) - 1  # no newline after it: possibly cut off by a killed run
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            if last:
                continue
            raise FeatbenchError(f"{path}: line {i + 1} is not valid JSON; fix or remove that line (results files are JSON lines)") from None
        if not isinstance(row, dict):
            raise FeatbenchError(f"{path}: line {i + 1} is not a JSON object; results files hold one row object per line")
        rows.append(row)
    return rows


def completed_keys(path: str | os.PathLike) -> set[tuple]:
    """Identities of the rows already in a results file (what a resumed sweep skips)."""
    keys = set()
    for row in read_rows(path):
        try:
            keys.add(row_key(row))
        except (KeyError, TypeError, ValueError):
            continue  # a foreign or older row without the identity fields: never matches a planned cell
    return keys


def _drop_partial_tail(fh) -> None:
    """Cut a trailing line without newline (a row a killed writer left half-written)."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return
    fh.seek(size - 1)
    if fh.read(1) == b"\n":
        return
    # find the last newline; everything after it is the partial row
    block = 1 << 16
    pos = size
    keep = 0
    while pos > 0:
        start = max(0, pos - block)
        fh.seek(start)
        chunk = fh.read(pos - start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            keep = start + idx + 1
            break
        pos = start
    fh.truncate(keep)


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping]) -> int:
    """Append rows as JSON lines, each flushed and fsync'ed; returns how many were written."""
    rows = list(rows)
    if not rows:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as fh:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # guards against a second featbench writing the same file
        except (ImportError, OSError):  # pragma: no cover - non-POSIX
            pass
        _drop_partial_tail(fh)
        fh.seek(0, os.SEEK_END)
        for row in rows:
            line = json.dumps(jsonable(dict(row)), separators=(",", ":")) + "\n"
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())
    return len(rows)


__all__ = [
    "ROW_FIELDS", "KEY_FIELDS", "jsonable", "canonical_json", "row_key", "now_iso",
    "read_rows", "append_rows", "completed_keys",
]
