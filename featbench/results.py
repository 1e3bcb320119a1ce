"""Result rows: the schema, their identity, and the append-only JSON-lines file that makes sweeps resumable.

One JSON object per line. The file is strictly append-only: existing bytes are never rewritten or truncated.
A sweep killed mid-write leaves at most one partial line; ``read_rows`` skips such a line (a ``{`` that
never closes) and the next append starts on a fresh line, so rerunning the same command resumes cleanly.
A file that is not a featbench results file (say a ``config.json`` given as ``--out``) is refused before
anything runs. Appends happen under an exclusive ``flock``, and the writer re-reads what other processes
appended since it last looked, so two identical ``fit`` commands on one file never write a row twice.
Every row is flushed and fsync'ed before the next cell's row: an interruption loses at most the cell in flight.
A row that fails to write (a full disk) is cut off again, so the file ends at its last complete row.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from featbench.diskspace import disk_full_as_error, write_all
from featbench.errors import FeatbenchError

#: every row carries these fields (CONTRIBUTING.md "Result rows"), in this order
ROW_FIELDS = (
    "dataset", "source_dataset", "model", "pretrained", "fingerprint", "content", "cache", "head", "params", "selected",
    "protocol", "classes", "shots", "seed", "acc", "mean_per_class_recall", "n_test", "fit_seconds", "trainable_params",
    "views_used", "notes", "featbench_version", "timestamp",
)
#: the fields that identify a row: two rows with equal keys are the same experiment (resume skips it).
#: ``content`` is the cache's content identity (class names + split index), so two custom datasets encoded
#: by the same model never share keys. ``classes`` is "all" | "base" | "new" (base-to-new); rows written
#: before base-to-new existed have none and mean "all".
KEY_FIELDS = ("fingerprint", "content", "source_dataset", "dataset", "head", "params", "protocol", "shots", "seed",
              "classes")
#: a line is taken for a result row when it has these (what every featbench version wrote)
_ROW_MARKERS = ("fingerprint", "dataset", "head", "protocol", "shots", "seed")


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
    """The identity of a row: (fingerprint, content, source dataset, dataset, head, params JSON, protocol, shots,
    seed, classes); a row without "classes" is an "all" row."""
    return (
        str(row["fingerprint"]),
        str(row.get("content") or ""),
        str(row.get("source_dataset") or row["dataset"]),
        str(row["dataset"]),
        str(row["head"]),
        canonical_json(row.get("params") or {}),
        str(row["protocol"]),
        int(row["shots"]),
        int(row["seed"]),
        str(row.get("classes") or "all"),
    )


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class NotAResultsFile(FeatbenchError):
    """A file given as a results file holds something else; nothing is written to it."""


def is_partial_row(raw: bytes) -> bool:
    """A line a killed writer cut short (it failed to parse): rows start with their dataset field."""
    text = raw.strip()
    return text.startswith(b'{"dataset":') or (text.startswith(b"{") and not text.endswith(b"}"))


def _parse_lines(path: Path, data: bytes, first_line: int = 1) -> list[dict]:
    rows: list[dict] = []
    for i, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        where = f"{path}: line {first_line + i}"
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if is_partial_row(raw):
                continue  # cut off by an interrupted run; the cell it belonged to is simply run again
            raise NotAResultsFile(f"{where} is not valid JSON; {path} is not a featbench results file (JSON lines) "
                                  f"— pass another --out, or fix that line") from None
        if not isinstance(row, dict) or not all(k in row for k in _ROW_MARKERS):
            raise NotAResultsFile(f"{where} is not a featbench result row; {path} is not a featbench results file "
                                  f"— pass another --out (featbench never overwrites it)")
        rows.append(row)
    return rows


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of a results file ([] when it does not exist); lines cut off by a killed run are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise FeatbenchError(f"{path} is a directory, not a results file; pass a .jsonl file path")
    return _parse_lines(path, path.read_bytes())


def check_results_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, an --out that is not (or cannot become) a featbench results file."""
    path = Path(path)
    if path.is_dir():
        raise FeatbenchError(f"--out {path} is a directory; pass a results file path such as {path / 'results.jsonl'}")
    if path.exists():
        read_rows(path)  # raises NotAResultsFile naming the offending line


def completed_keys(path: str | os.PathLike) -> set[tuple]:
    """Identities of the rows already in a results file (what a resumed sweep skips)."""
    return {row_key(r) for r in read_rows(path)}


class ResultsWriter:
    """Appends rows to one results file, never twice the same key, never touching existing bytes.

    It remembers how far it has read; under the lock it reads only what other writers appended since, so
    deduplication against a concurrent identical sweep costs a read of the new bytes, not the whole file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check_results_file(self.path)
        self.keys: set[tuple] = set()
        self._offset = 0  # bytes consumed: always just after a newline
        self._lines = 0  # newline-terminated lines consumed (for error messages)
        if self.path.exists():
            with open(self.path, "rb") as fh:
                self._catch_up(fh)

    def _catch_up(self, fh) -> None:
        """Read what was appended since the last look; a complete row without its newline counts too."""
        fh.seek(self._offset)
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end:
            for row in _parse_lines(self.path, data[:end], first_line=self._lines + 1):
                self.keys.add(row_key(row))
            self._lines += data[:end].count(b"\n")
            self._offset += end
        tail = data[end:]
        if tail.strip():  # no newline after it: a valid row (kept and counted) or a killed writer's fragment
            for row in _parse_lines(self.path, tail, first_line=self._lines + 1):
                self.keys.add(row_key(row))

    def append(self, rows: Iterable[Mapping]) -> list[dict]:
        """Append the rows whose keys are not in the file yet (re-checked under the lock); returns them.

        A full disk rolls the file back to its last complete row (the rows already written stay) and
        raises `DiskFull` naming the folder; rerunning the same command then resumes where it stopped.
        """
        rows = [dict(r) for r in rows]
        if not rows:
            return []
        folder = self.path.parent
        written: list[dict] = []
        pending = [0]  # bytes of the row being written (for the error line)
        with disk_full_as_error(folder, f"{self.path.name} (result rows)", lambda: pending[0],
                                then="rows written so far are kept; rerun the same command to resume"):
            folder.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+", buffering=0) as fh:  # unbuffered: a failed write leaves nothing behind
                try:
                    import fcntl

                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # a second featbench on the same file waits here
                except (ImportError, OSError):  # pragma: no cover - non-POSIX
                    pass
                self._catch_up(fh)
                for row in rows:
                    key = row_key(row)
                    if key in self.keys:
                        continue
                    line = (json.dumps(jsonable(row), separators=(",", ":")) + "\n").encode()
                    pending[0] = len(line)
                    self._write_row(fh, line)
                    self.keys.add(key)
                    written.append(row)
                self._catch_up(fh)  # moves the offset past our own lines
        return written

    @staticmethod
    def _write_row(fh, line: bytes) -> None:
        """One row on a fresh line, durable before the next; on failure the file is cut back to where it was."""
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":  # keep the last line as it is; ours start on a fresh line
                line = b"\n" + line
        try:
            write_all(fh.fileno(), line)
            os.fsync(fh.fileno())
        except BaseException:
            try:  # shrinking a file needs no free space: no cut-off row is left behind
                os.ftruncate(fh.fileno(), size)
                os.fsync(fh.fileno())
            except OSError:  # pragma: no cover - then the reader skips the partial row
                pass
            raise


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping]) -> int:
    """Append rows as JSON lines (skipping keys already present); returns how many were written."""
    return len(ResultsWriter(path).append(rows))


__all__ = [
    "ROW_FIELDS", "KEY_FIELDS", "jsonable", "canonical_json", "row_key", "now_iso",
    "read_rows", "append_rows", "completed_keys", "check_results_file", "ResultsWriter", "NotAResultsFile",
]
