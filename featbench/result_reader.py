"""Reading result files for tables, plots and comparisons: streamed, checked, each repeated value stored once.

:func:`load_results` keeps only the fields asked for (``TABLE_FIELDS`` for a table or a plot), so a
200,000-row file needs less memory than its size. Every row is checked where it enters: ``acc`` (and
``mean_per_class_recall`` where present) must be finite numbers, the identity keys present and typed; anything
else is an error naming the file and line. The same run written twice with different numbers is an error naming
both lines (by :func:`featbench.results.row_key`), as soon as the second is read.
"""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path
from typing import Iterable

from featbench.errors import FeatbenchError
from featbench.results import canonical_json, is_partial_row
from featbench.table_model import METRICS, REQUIRED_KEYS


TABLE_FIELDS = ("dataset", "source_dataset", "model", "pretrained", "fingerprint", "content", "head", "params",
                "selected", "overrides", "paper_defaults", "protocol", "test_selection", "classes", "fallback",
                "transductive", "fit_device", "shots", "seed", "acc", "mean_per_class_recall", "trainable_params")
#: what ``featbench compare`` reads in addition
PER_CLASS_FIELDS = TABLE_FIELDS + ("cache", "per_class")


def result_files(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    """The files behind ``paths`` (a folder stands for its ``*.jsonl``), each checked to exist."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise FeatbenchError(f"{p}: directory holds no *.jsonl result files; pass a results file")
            files.extend(found)
        elif not p.exists():
            raise FeatbenchError(f"{p}: results file not found; pass the .jsonl written by `featbench fit`")
        else:
            files.append(p)
    if not files:
        raise FeatbenchError("no results files given; pass one or more .jsonl files written by `featbench fit`")
    return files


def load_results(paths: Iterable[str | Path] | str | Path, *, fields: Iterable[str] | None = None):
    """Read result JSON-lines files (or directories of ``*.jsonl``) into one DataFrame, validating every line.

    The files are read line by line and each repeated value is stored once, so memory grows with the rows'
    kept fields, not the file's size; ``fields`` keeps only those columns (None: every field). A row that
    repeats an earlier run (same :func:`featbench.results.row_key`) with other numbers is an error at once.
    Columns ``_order`` (input order), ``_file`` and ``_line`` say where each row came from.
    """
    reader = RowReader(fields)
    for f in result_files(paths):
        reader.read_file(f)
    return reader.frame()


def row_sources(df) -> list[str]:
    """``file:line`` of each row of a frame from :func:`load_results` (``row N`` for a hand-made frame)."""
    if "_file" in df.columns and "_line" in df.columns:
        return [f"{f}:{n}" for f, n in zip(df["_file"], df["_line"])]
    return [f"row {o + 1}" for o in df["_order"]]


class RowReader:
    """Validated result rows, kept column by column with every repeated value stored once.

    A results file repeats a few hundred distinct strings and settings over its rows: storing each once keeps
    the memory of 200,000 rows far below the file's size. Conflicting copies of a run are reported as soon
    as the second one is read.
    """

    def __init__(self, fields: Iterable[str] | None = None):
        self.fields = None if fields is None else tuple(fields) + ("_file", "_line")
        self.columns: dict[str, list] = {}
        self.n = 0
        self._present: set[str] = set()  # the fields some row had (a column no row had is left out)
        self._slots: list[tuple] = []  # (field, column, pool of its strings, pool of its dicts and lists)
        self._seen: dict[int, int] = {}
        self._clashes: dict[tuple, int] = {}
        self._canon: dict[int, str] = {}
        for k in self.fields or ():
            self._add_column(k)

    def _add_column(self, k: str) -> None:
        if k in _COMPACT:  # 8 bytes a row instead of a Python number each
            self.columns[k] = array(_COMPACT[k], [0 if _COMPACT[k] == "q" else math.nan] * self.n)
        else:
            self.columns[k] = [None] * self.n
        self._slots.append((k, self.columns[k], {}, None if k in _UNSHARED else {}))

    def read_file(self, f: Path) -> None:
        n_before, name = self.n, str(f)
        try:
            with open(f, "rb") as fh:
                for lineno, raw in enumerate(fh, 1):
                    if raw.strip():
                        self._read_line(raw, name, lineno)
        except OSError as err:
            raise FeatbenchError(f"{f}: cannot read results file ({err})") from None
        if self.n == n_before:
            raise FeatbenchError(f"{f}: results file is empty (no result rows); run `featbench fit` first")

    def _read_line(self, raw: bytes, f: str, lineno: int) -> None:
        try:
            row = json.loads(raw)
        except UnicodeDecodeError as err:
            raise FeatbenchError(f"{f}: cannot read results file ({err})") from None
        except json.JSONDecodeError as err:
            if not raw.endswith(b"\n") or is_partial_row(raw):
                return  # a line an interrupted run cut short (kept: files are append-only); the runner redid it
            raise FeatbenchError(f"{f}:{lineno}: not valid JSON ({err.msg}); is this a featbench results file?") from None
        check_result_row(row, f"{f}:{lineno}")
        row["_file"], row["_line"] = f, lineno
        self._append(row)
        self._check_conflict()

    def _append(self, row: dict) -> None:
        """Store the row's kept fields, each repeated string, setting or list stored once."""
        self._present.update(row)
        if self.fields is None and not self._present <= self.columns.keys():
            for k in self._present - self.columns.keys():
                self._add_column(k)
        get = row.get
        for k, col, strings, others in self._slots:
            v = get(k)
            if col.__class__ is array:
                v = math.nan if v is None else v  # checked numbers (shots, seed: integers)
            elif v.__class__ is str:
                v = strings.setdefault(v, v)
            elif others is not None and (v.__class__ is dict or v.__class__ is list):
                v = others.setdefault(repr(v), v)  # repr is exact here: 1, 1.0 and True stay apart
            col.append(v)
        self.n += 1

    def _check_conflict(self) -> None:
        """The same run (its resume key) read twice with another accuracy: an error naming both lines."""
        i, c = self.n - 1, self.columns
        key = self._run_key(i)
        first = self._seen.setdefault(hash(key), i)  # a hash a row: the keys themselves would cost more memory
        if first != i and self._run_key(first) != key:  # two runs whose keys share a hash
            first = self._clashes.setdefault(key, i)
        if first == i or round(float(c["acc"][first]), 10) == round(float(c["acc"][i]), 10):
            return
        raise FeatbenchError(
            f"conflicting result rows for {c['head'][i]} on {c['dataset'][i]}, {c['shots'][i]}-shot, seed "
            f"{c['seed'][i]}: {c['_file'][first]}:{c['_line'][first]} (acc {c['acc'][first]:g}), "
            f"{c['_file'][i]}:{c['_line'][i]} (acc {c['acc'][i]:g}); the same run with different numbers: remove "
            "the wrong line(s) or keep the files apart")

    def _run_key(self, i: int) -> tuple:
        """:func:`featbench.results.row_key` of stored row ``i``, each setting's JSON computed once."""
        c = self.columns
        params = (c["params"][i] if "params" in c else None) or {}
        canon = self._canon.get(id(params))
        if canon is None:
            canon = self._canon[id(params)] = canonical_json(params)
        get = lambda k: c[k][i] if k in c else None  # noqa: E731
        return (get("fingerprint"), get("content") or "", get("source_dataset") or c["dataset"][i],
                c["dataset"][i], c["head"][i], canon, c["protocol"][i], c["shots"][i], c["seed"][i],
                get("classes") or "all")

    def frame(self):
        """The rows read so far as one DataFrame (column by column, so only one column is ever copied twice)."""
        import numpy as np
        import pandas as pd

        self._slots.clear()
        self._seen.clear()
        self._clashes.clear()
        self._canon.clear()
        data = {}
        for k in [k for k in self.columns if k in self._present]:
            col = self.columns.pop(k)
            if col.__class__ is array:
                data[k] = pd.Series(np.frombuffer(col, dtype=col.typecode if col.typecode == "d" else np.int64))
            else:
                data[k] = pd.Series(col, dtype=None if k in _NUMERIC else object)
            del col
        self.columns.clear()
        data["_order"] = pd.RangeIndex(self.n)
        return pd.DataFrame(data, copy=False)


#: columns stored as machine numbers while reading (array typecodes): checked integers and percentages
_COMPACT = {"shots": "q", "seed": "q", "_line": "q", "acc": "d", "mean_per_class_recall": "d"}
#: columns of numbers (their dtype is inferred); every other column holds Python objects
_NUMERIC = ("shots", "seed", "acc", "mean_per_class_recall", "n_test", "fit_seconds", "_order", "_line")
#: values unique to (almost) every row: sharing them would only cost memory
_UNSHARED = ("per_class",)




def check_result_row(row, where: str) -> None:
    """Everything a table relies on in one parsed line (a JSON object with the required keys, integer
    shots/seed, typed fields, finite percentages); anything else is an error naming ``where``."""
    if not isinstance(row, dict):
        raise FeatbenchError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise FeatbenchError(f"{where}: result row lacks {', '.join(missing)}; is this a featbench results file?")
    for k in ("shots", "seed"):
        if not isinstance(row[k], int) or isinstance(row[k], bool):
            raise FeatbenchError(f"{where}: '{k}' must be an integer, got {row[k]!r}")
        if not -2**63 <= row[k] < 2**63:
            raise FeatbenchError(f"{where}: '{k}' is {row[k]}, too large for a table; fix or remove that line")
    _check_row(row, where)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _check_row(row: dict, where: str) -> None:
    """Types and ranges a table relies on; anything else is an error naming the line (never a quiet NaN)."""
    if row["shots"] < 1:
        raise FeatbenchError(f"{where}: 'shots' must be 1 or more, got {row['shots']}; fix or remove that line")
    for k in ("dataset", "head", "protocol", "model", "pretrained", "source_dataset", "fingerprint", "content"):
        if k in row and not (isinstance(row[k], str) or (row[k] is None and k not in REQUIRED_KEYS)):
            raise FeatbenchError(f"{where}: '{k}' must be a string, got {_shown(row[k])}; fix or remove that line")
    for k in ("params", "selected", "overrides"):
        if row.get(k) is not None and not isinstance(row[k], dict):
            raise FeatbenchError(f"{where}: '{k}' must be an object, got {_shown(row[k])}; fix or remove that line")
    for k in METRICS:
        if k == "acc" or row.get(k) is not None:
            _check_number(row.get(k), where, k)
    count = row.get("trainable_params")  # absent or null: unknown (older rows, heads that do not say)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise FeatbenchError(f"{where}: 'trainable_params' must be a whole number >= 0 or null, got {_shown(count)}; "
                             "fix or remove that line")


def _check_number(value, where: str, key: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise FeatbenchError(f"{where}: '{key}' must be a finite number, got {_shown(value)}; fix or remove that line")
    if not 0 <= value <= 100:
        raise FeatbenchError(f"{where}: '{key}' is {value:g}, outside 0-100 (a percentage); fix or remove that line")


def present(df, col: str):
    """Rows where ``col`` holds a value (not missing, not ""); False for a missing column."""
    if col not in df.columns:
        return False
    return df[col].notna() & (df[col].astype(object) != "")


__all__ = ["TABLE_FIELDS", "PER_CLASS_FIELDS", "result_files", "load_results", "row_sources", "RowReader",
           "check_result_row", "present"]
