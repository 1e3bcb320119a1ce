"""Result tables: pure functions of result rows (JSON lines) -> mean ± std tables as CSV, LaTeX, Markdown.

The three table dimensions are ``dataset``, ``head`` and ``shots``. Two of them become the rows and columns;
the third is either averaged (``dataset``: the table shows the "Average" over datasets) or, when it has more
than one value, splits the table into blocks (``head`` / ``shots``: one block per value).

Rules (so a table can go into a paper without a notebook in between):
- A cell is the mean and the *population* std (ddof=0, as CoOp's parser prints) over seeds, with the seed count.
- "Average" over datasets exists only where every dataset of the table has the cell; otherwise it is shown as
  missing ("—"), never as an average of a partial set. Its std is the std over seeds of the per-seed average,
  shown only when every dataset has the same seeds.
- A row is labelled by its head (the paper's name with ``names="paper"``, as ``featbench table`` prints it: TaskRes,
  CLIP-Adapter; the registry's otherwise) plus what the user changed: rows that record ``overrides`` show every
  override (``TaskRes (epochs=20)``, even when all rows share it) and never a ``paper_defaults`` key, so a head's
  paper-default runs form one row across shots and datasets whatever their per-shot epochs.
- A head run with several settings (a grid, ``--set`` variants, several models or protocols in the same files) is
  never averaged together: the keys that differ between rows of the same (dataset, shots, seed) are added to its
  label, e.g. ``taskres (alpha=0.25)`` (for rows without ``overrides``, written by older versions, these keys are
  the only label). Keys a protocol search selected are not identity.
- Domain-generalisation rows (trained on ``source_dataset``, evaluated on ``dataset``) are labelled by the
  dataset evaluated on (``imagenetv2 (from imagenet)`` only if that name would collide with in-domain rows).
- Cells from the ``oracle`` protocol or rows with ``test_selection`` (hyperparameters picked on the test set) carry
  a dagger, base-to-new New/H cells from the zero-shot fallback a double dagger, each with a footnote; they are
  never bold and their heads never ranked (honest cells compete only with honest cells).
- Never across encoders: rows of different encoders (model/pretrained) are never averaged together. The CLI
  prints one table per encoder under an "Encoder:" heading (:func:`aggregate_by_encoder`); a single
  :class:`Table` holding several encoders labels every head with its encoder. ``--model``/``--pretrained`` filter.
- Duplicates: the same run (same table cell, seed and cache fingerprint) written twice with the same numbers
  counts once (e.g. a results file passed twice); with *different* numbers it is an error naming both lines
  (never "the later row wins"; two lines of one run, by :func:`featbench.results.row_key`, are reported as soon as
  the second is read). Rows that differ only in the cache (same encoder name, other preprocessing or
  prompts: ``fingerprint=...``; other data or class names: ``content=...``) are labelled apart, never averaged.
- ``acc`` (and ``mean_per_class_recall`` where present) must be finite numbers; anything else is an error naming
  the file and line.
- With heads as rows, a ``rank`` column ranks heads (1 = best, ties share the better rank) by the mean of the
  row over the table's columns (excluding "Average"), i.e. for ``--rows head --cols shots`` the mean over shots
  of the dataset-average accuracy. Heads with a missing cell are not ranked.
- Base-to-new rows (``"classes": "base"``/``"new"``) never mix with ordinary (``"all"``) rows: ``aggregate``
  uses the "all" rows, ``featbench.b2n_table.aggregate_base_to_new`` the others (B / N / H columns, see its docstring).
- Reading streams: :func:`load_results` keeps the fields asked for, each repeated value once (``TABLE_FIELDS``:
  a 200,000-row file needs less memory than its size).
- Bold marks the best head: per column when heads are the rows, per row when heads are the columns, per cell
  across blocks when heads are the blocks (ties all bold; compared at the printed precision).
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from featbench.errors import FeatbenchError
from featbench.results import canonical_json, is_partial_row, row_key
from featbench.table_model import (AVERAGE, DATASET_ORDER, DIMS, FORMATS, MAX_DECIMALS, METRIC_NAMES, METRICS,  # noqa: F401
                                   MISSING, NAMES, ORACLE_NOTE, OVERRIDES_NOTE, PARAMS, PROTOCOLS, PUBLISHED_NOTE,
                                   REQUIRED_KEYS, Table, check_names, display_name, order_datasets, order_heads)
from featbench.table_render import check_decimals, latex_escape, render, render_groups

# -- loading ----------------------------------------------------------------------------------------------
def filter_rows(prepared, *, heads=None, shots=None, datasets=None):
    """Keep the rows of the given heads (registry names, paper names or labels), shot counts and datasets (None: all)."""
    if heads is not None:
        wanted = set(heads)
        named = {h for h in set(prepared["head"]) if h in wanted or display_name(h) in wanted}
        prepared = prepared[prepared["head"].isin(named) | prepared["head_label"].isin(wanted)]
    if shots is not None:
        prepared = prepared[prepared["shots"].isin(set(shots))]
    if datasets is not None:
        prepared = prepared[prepared["dataset"].isin(set(datasets))]
    return prepared


#: the fields a table or a plot reads: ``load_results(..., fields=TABLE_FIELDS)`` keeps only these, so a big
#: results file (notes, timestamps, per-class counts) is read in a fraction of its size
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


def encoder_label(model, pretrained) -> str:
    """How tables name an encoder: ``model/pretrained``."""
    return f"{model}/{pretrained}" if pretrained not in (None, "") else str(model)


def filter_encoder(df, model: str | None = None, pretrained: str | None = None):
    """Keep the rows of one model and/or weights tag (``--model``/``--pretrained``); an error if none match."""
    for key, want in (("model", model), ("pretrained", pretrained)):
        if want is None:
            continue
        have = sorted({str(v) for v in df[key]}) if key in df.columns else []
        df = df[df[key].astype(str) == str(want)] if key in df.columns else df.iloc[0:0]
        if df.empty:
            raise FeatbenchError(f"--{key} {want}: no result rows; the results have {key} {', '.join(have) or 'none'}")
    return df


# -- preparing rows -----------------------------------------------------------------------------------------
def _fmt_param(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


_META_KEYS = ("model", "protocol", "fingerprint", "content")


@dataclass
class _Setting:
    """One distinct head setting of the rows: what identifies it, how it is shown, what is always marked."""

    head: str
    ident: dict  # key -> canonical JSON: what tells two settings of a head apart
    shown: dict  # key -> text for the label
    always: tuple  # the overrides: marked in the label even when every row shares them
    new_style: bool  # the row records its overrides (rows of older featbench versions do not)


def _setting(head, params, selected, overrides, paper_keys, model, pretrained, protocol, fp, content) -> _Setting:
    """A row's setting. Rows that record ``overrides`` are identified by them (and by anything that is neither
    a paper default nor selected); older rows by every parameter the protocol did not select."""
    params = params if isinstance(params, dict) else {}
    selected = selected if isinstance(selected, dict) else {}
    new_style = isinstance(overrides, dict)
    skip = set(selected) | (set(paper_keys) if new_style and isinstance(paper_keys, (list, tuple)) else set())
    ident = {str(k): canonical_json(v) for k, v in params.items() if k not in skip}
    shown = {str(k): _fmt_param(v) for k, v in params.items() if k not in skip}
    always: tuple = ()
    if new_style:
        for k, v in overrides.items():
            ident[str(k)], shown[str(k)] = canonical_json(v), _fmt_param(v)
        always = tuple(str(k) for k in overrides)
    ident["model"] = shown["model"] = encoder_label(model, pretrained)
    ident["protocol"] = shown["protocol"] = str(protocol)
    shown["fingerprint"] = str(fp if isinstance(fp, str) else "")[:8]
    shown["content"] = str(content if isinstance(content, str) else "")[:8]
    return _Setting(str(head), ident, shown, always, new_style)


def _setting_codes(df) -> tuple[list[int], list[_Setting]]:
    """Each row's setting code and the distinct settings (rows sharing stored values are looked at once)."""
    cols = [df[c].tolist() if c in df.columns else [None] * len(df) for c in
            ("head", "params", "selected", "overrides", "paper_defaults", "model", "pretrained", "protocol",
             "fingerprint", "content")]
    index: dict[tuple, int] = {}
    settings: list[_Setting] = []
    by_ident: dict[str, int] = {}
    codes = []
    for values in zip(*cols):
        key = tuple(v if isinstance(v, (str, int, float, type(None))) else id(v) for v in values)
        code = index.get(key)
        if code is None:
            setting = _setting(*values)
            # equal settings held in different objects (a hand-made frame) share one code too
            code = by_ident.setdefault(canonical_json([setting.head, setting.ident, setting.always,
                                                       setting.shown["fingerprint"], setting.shown["content"]]),
                                       len(settings))
            if code == len(settings):
                settings.append(setting)
            index[key] = code
        codes.append(code)
    return codes, settings


def _varying_keys(df, codes: list[int], settings: list[_Setting]) -> dict[str, set[str]]:
    """Per head, the keys that differ between its settings on the same (dataset, shots, seed)."""
    varying: dict[str, set[str]] = {}
    if len({s.ident["model"] for s in settings}) > 1:
        for s in settings:
            varying.setdefault(s.head, set()).add("model")
    keys = ["head", "dataset", "source_dataset", "shots", "seed"]
    cells = df[keys].assign(_code=codes).drop_duplicates()
    many = cells[cells.groupby(keys, sort=False)["_code"].transform("size") > 1]
    for (head, *_), members in many.groupby(keys, sort=False)["_code"]:
        group = [settings[c] for c in members]
        for k in set().union(*(s.ident.keys() for s in group)):
            if len({s.ident.get(k, "None") for s in group}) > 1:
                varying.setdefault(head, set()).add(k)
        # same encoder name and settings, other cache (preprocessing, prompts, data): never merged
        caches: dict[str, set[tuple[str, str]]] = {}
        for s in group:
            caches.setdefault(canonical_json(s.ident), set()).add((s.shown["fingerprint"], s.shown["content"]))
        for pairs in caches.values():
            if len({fp for fp, _ in pairs}) > 1:
                varying.setdefault(head, set()).add("fingerprint")
            elif len(pairs) > 1:
                varying.setdefault(head, set()).add("content")
    return varying


def _label(setting: _Setting, varying: set[str], names: str) -> str:
    if setting.new_style:  # its overrides, and what varies among what it records (never a paper default)
        keys = set(setting.always) | {k for k in varying if k in setting.ident or k in _META_KEYS}
    else:
        keys = set(varying)
    keys = sorted(keys, key=lambda k: (k in _META_KEYS, k))
    name = display_name(setting.head, names)
    if not keys:
        return name
    inner = ", ".join(f"{k}={setting.shown.get(k, 'None')}" for k in keys)
    return f"{name} ({inner})"


def _head_labels(df, names: str = "registry") -> tuple[list[str], list[bool]]:
    """Label each row by its head plus the keys that tell its setting apart (see the module docstring), and
    say whether the row runs with overrides. With more than one encoder every label names its encoder."""
    codes, settings = _setting_codes(df)
    varying = _varying_keys(df, codes, settings)
    labels = [_label(s, varying.get(s.head, set()), names) for s in settings]
    return [labels[c] for c in codes], [bool(settings[c].always) for c in codes]


def _dataset_labels(df) -> list[str]:
    in_domain = set(df.loc[df["source_dataset"] == df["dataset"], "dataset"])
    out = []
    for ds, src in zip(df["dataset"].tolist(), df["source_dataset"].tolist()):
        out.append(ds if ds == src or ds not in in_domain else f"{ds} (from {src})")
    return out


def prepare(df, metric: str = "acc", protocol: str | None = None, *, names: str = "registry"):
    """Filter by protocol, label heads/datasets, keep one row per (head, dataset, shots, seed); conflicting
    copies of a row are an error naming their lines. ``names``: "paper" labels heads by their papers' names.

    Adds ``head_label``, ``dataset_label``, ``value``, ``is_oracle`` (selected on the test set),
    ``is_fallback`` (a base-to-new New from the zero-shot fallback) and ``has_overrides``.
    """
    check_names(names)
    if metric not in METRICS:
        raise FeatbenchError(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise FeatbenchError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    df = df.copy(deep=False)  # columns are added, never changed in place (copy-on-write keeps the caller's)
    if "_order" not in df.columns:
        df["_order"] = range(len(df))
    for col, default in (("params", None), ("selected", None), ("model", ""), ("pretrained", "")):
        if col not in df.columns:
            df[col] = default
    if "classes" not in df.columns:
        df["classes"] = "all"
    df["classes"] = df["classes"].where(df["classes"].notna(), "all")
    if "source_dataset" not in df.columns:
        df["source_dataset"] = df["dataset"]
    df["source_dataset"] = df["source_dataset"].where(df["source_dataset"].notna(), df["dataset"])
    if protocol is not None:
        df = df[df["protocol"] == protocol]
        if df.empty:
            raise FeatbenchError(f"no result rows with --protocol {protocol}")
    if metric not in df.columns or df[metric].isna().all():
        raise FeatbenchError(f"the result rows have no '{metric}' values; choose another --metric")
    df = keep_rows(df, df[metric].notna())
    df["head_label"], df["has_overrides"] = _head_labels(df, names)
    df["dataset_label"] = _dataset_labels(df)
    df["value"] = df[metric].astype(float)
    df["is_oracle"] = (df["protocol"] == "oracle") | _true(df, "test_selection")
    df["is_fallback"] = (df["classes"] == "new") & _present(df, "fallback")
    df["is_transductive"] = _true(df, "transductive")
    if not df["_order"].is_monotonic_increasing:
        df = df.sort_values("_order")
    duplicated = _check_duplicates(df, metric)
    return keep_rows(df, ~duplicated)


def keep_rows(df, mask):
    """``df[mask]`` with a fresh index; the frame itself (no copy of 200,000 rows) when the mask keeps all."""
    if bool(mask.all()):
        return df.reset_index(drop=True)  # copy-on-write: shares the data
    return df[mask].reset_index(drop=True)


def _true(df, col: str):
    """Rows whose ``col`` is JSON true (a missing column or value: false)."""
    if col not in df.columns:
        return False
    return df[col].map(lambda v: v is True or v == True)  # noqa: E712 - numpy bools too


def _present(df, col: str):
    if col not in df.columns:
        return False
    return df[col].notna() & (df[col].astype(object) != "")


def _check_duplicates(df, metric: str):
    """Rows for the same cell and seed must agree: identical copies count once (the returned mask marks the
    later copies), conflicting ones are an error naming their lines."""
    key = ["head_label", "dataset_label", "shots", "seed"] + (["classes"] if "classes" in df.columns else [])
    repeated = df.duplicated(key, keep=False)
    if not repeated.any():
        return repeated
    dup = df[repeated]
    values = [c for c in dict.fromkeys(("acc", metric)) if c in dup.columns]
    for _, group in dup.groupby(key, sort=False):
        distinct = group[values].astype(float).round(10).drop_duplicates()
        if len(distinct) > 1:
            where = row_sources(group)
            head, ds, shots, seed = (group.iloc[0][k] for k in key[:4])
            shown = ", ".join(f"{w} ({metric} {v:g})" for w, v in zip(where, group[metric].astype(float)))
            raise FeatbenchError(
                f"conflicting result rows for {head} on {ds}, {shots}-shot, seed {seed}: {shown}; "
                "the same run with different numbers: remove the wrong line(s) or keep the files apart")
    return df.duplicated(key, keep="first")


# -- aggregation ----------------------------------------------------------------------------------------------
def cell_stats(df):
    """Long table of per-(head, dataset, shots) stats over seeds, plus the dataset "Average" rows.

    Columns: head, dataset, shots, mean, std, n, oracle, transductive. ``df`` is the output of :func:`prepare`.
    """
    import pandas as pd

    g = df.groupby(["head_label", "dataset_label", "shots"], sort=False)
    cells = g.agg(mean=("value", "mean"), n=("seed", "nunique"), oracle=("is_oracle", "any"),
                  transductive=("is_transductive", "any"))
    cells.insert(1, "std", g["value"].std(ddof=0))  # population std, as CoOp's parser prints
    cells = cells.reset_index()
    cells = cells.rename(columns={"head_label": "head", "dataset_label": "dataset"})
    return pd.concat([cells, _average_cells(df, cells)], ignore_index=True)


def _average_cells(df, cells):
    """The "Average" rows of :func:`cell_stats`, one per (head, shots), in grouped (not per-group) steps.

    The mean of the per-dataset means, only where every dataset has the cell; its std is the std over seeds
    of the per-seed average when every dataset has the same seeds (else no std, and n the fewest seeds).
    """
    n_ds = df["dataset_label"].nunique()
    by_cell = cells.groupby(["head", "shots"], sort=False)
    out = by_cell.agg(have=("dataset", "nunique"), mean=("mean", "mean"), fewest=("n", "min"),
                      oracle=("oracle", "any"), transductive=("transductive", "any"))
    seeds = df.groupby(["head_label", "shots", "seed"], sort=False).agg(avg=("value", "mean"),
                                                                         k=("dataset_label", "nunique"))
    by_seed = seeds.groupby(level=[0, 1], sort=False)
    per_seed = by_seed.agg(k_min=("k", "min"), n_seeds=("k", "size"))
    per_seed["std"] = by_seed["avg"].std(ddof=0)
    per_seed.index = per_seed.index.set_names(["head", "shots"])
    out = out.join(per_seed)
    complete = out["have"] == n_ds
    same_seeds = complete & (out["k_min"] == n_ds)
    out["mean"] = out["mean"].where(complete)
    out["std"] = out["std"].where(same_seeds)
    out["n"] = out["n_seeds"].where(same_seeds, out["fewest"].where(complete, 0)).astype(int)
    out = out.reset_index()
    out["dataset"] = AVERAGE
    return out[["head", "dataset", "shots", "mean", "std", "n", "oracle", "transductive"]]


def aggregate(df, metric: str = "acc", rows: str = "dataset", cols: str = "shots", protocol: str | None = None,
              *, heads: Iterable[str] | None = None, shots: Iterable[int] | None = None,
              datasets: Iterable[str] | None = None, model: str | None = None,
              pretrained: str | None = None, names: str = "registry", published: bool = False) -> Table:
    """Aggregate result rows (the DataFrame from :func:`load_results`) into a :class:`Table`.

    ``heads``/``shots``/``datasets`` optionally restrict the table (heads match the registry name, the paper's
    name or the full label; datasets the dataset evaluated on). ``names="paper"`` labels heads by their
    papers' names (``featbench table`` does), "registry" by their registry names. ``published=True`` puts the
    number a paper publishes beside each cell that has one (:func:`attach_published`).
    """
    import pandas as pd

    if cols == PARAMS:
        return aggregate_params(df, metric, rows, protocol, heads=heads, shots=shots, datasets=datasets, model=model,
                                pretrained=pretrained, names=names)
    if rows not in DIMS:
        raise FeatbenchError(f"--rows must be one of {', '.join(DIMS)}; got {rows!r}")
    if cols not in DIMS:
        raise FeatbenchError(f"--cols must be one of {', '.join(DIMS + (PARAMS,))}; got {cols!r}")
    if rows == cols:
        raise FeatbenchError(f"--rows and --cols must differ (both are {rows!r})")
    prepared = _table_rows(df, metric, protocol, model, pretrained, names, heads=heads, shots=shots, datasets=datasets)
    cells = cell_stats(prepared)
    orders = {
        "head": order_heads(prepared),
        "dataset": _with_average(order_datasets(prepared["dataset_label"]), rows, cols),
        "shots": sorted(set(int(s) for s in prepared["shots"])),
    }
    block = next(d for d in DIMS if d not in (rows, cols))
    if block == "dataset":
        cells = cells[cells["dataset"] == AVERAGE]
        block_dim = None
    else:
        block_dim = block if len(orders[block]) > 1 else None
    row_order, col_order = orders[rows], orders[cols]
    index_keys = [block, rows] if block_dim else [rows]
    if block_dim:
        index = pd.MultiIndex.from_tuples([(b, r) for b in orders[block] for r in row_order], names=index_keys)
    else:
        index = pd.Index(row_order, name=rows)

    def _pivot(value, fill):
        piv = cells.pivot_table(index=index_keys, columns=cols, values=value, aggfunc="first", dropna=False)
        piv = piv.reindex(index=index, columns=col_order)
        return piv.where(piv.notna(), fill) if fill is not None else piv

    mean = _pivot("mean", None).astype(float)
    std = _pivot("std", None).astype(float)
    n = _pivot("n", 0).astype(float)
    def _flag(value):
        flags = cells.assign(**{value: cells[value].astype(int)})
        piv = flags.pivot_table(index=index_keys, columns=cols, values=value, aggfunc="max", dropna=False)
        return piv.reindex(index=index, columns=col_order).fillna(0).astype(bool)

    piv_o, piv_t = _flag("oracle"), _flag("transductive")
    # drop rows that have no cell at all (e.g. a (shots, head) block where a head was not run)
    keep = mean.notna().any(axis=1) | (mean.index.get_level_values(-1) == AVERAGE)
    if block_dim:
        # an Average row belongs in a block only if that block has real rows
        real = mean.notna().any(axis=1) & (mean.index.get_level_values(-1) != AVERAGE)
        blocks_with_rows = set(mean.index[real].get_level_values(0))
        keep = keep & mean.index.get_level_values(0).isin(blocks_with_rows)
    mean, std, n, piv_o, piv_t = mean[keep], std[keep], n[keep], piv_o[keep], piv_t[keep]
    table = Table(mean=mean, std=std, n=n, oracle=piv_o, transductive=piv_t, rows=rows, cols=cols, block_dim=block_dim,
                  metric=metric, protocol=protocol, overrides=bool(prepared["has_overrides"].any()))
    if rows == "head":
        table.rank = _rank(mean, table.flagged())
    table.notes += _notes(prepared, block)
    if published:
        fixed = {"dataset": AVERAGE} if block == "dataset" else ({} if block_dim else {block: orders[block][0]})
        attach_published(table, prepared, fixed=fixed)
    return table


# -- published numbers beside ours ----------------------------------------------------------------------------
_B2N_SPLITS = {"Base": "base", "New": "new", "H": "H"}


def attach_published(table: Table, prepared, *, fixed: dict | None = None, blocks: dict | None = None,
                     ledger=None) -> Table:
    """Fill ``table.published`` / ``published_source`` from the ledger of published numbers and add a note
    naming the sources.

    A cell matches a ledger row on head (a plain label: no overrides, no variant keys), model, pretrained,
    dataset ("Average" = the ledger's "average"; a dataset evaluated away from its training set =
    domain generalisation), shots and protocol (our paper/val/oracle rows are the papers' few-shot protocol;
    Base/New/H columns are base-to-new). ``fixed`` gives the dimension the table does not show (its single
    value); ``blocks`` maps base-to-new block labels to (head label, shots).
    """
    import pandas as pd

    from featbench import published as pub

    index = pub.Index(pub.read_ledger() if ledger is None else ledger)
    encoders = prepared[["model", "pretrained"]].drop_duplicates()
    values = pd.DataFrame(float("nan"), index=table.mean.index, columns=table.mean.columns)
    sources = pd.DataFrame("", index=table.mean.index, columns=table.mean.columns)
    found: dict[str, str] = {}
    if len(encoders) == 1:
        model, pretrained = (str(v) for v in encoders.iloc[0])
        heads = _plain_heads(prepared)
        places = {lab: (str(ds), str(src)) for lab, ds, src in
                  zip(prepared["dataset_label"], prepared["dataset"], prepared["source_dataset"])}
        if set(places) != set(pub.AVERAGED):  # a published average is over CoOp's eleven datasets, no others
            places[AVERAGE] = None
        for i, key in enumerate(table.mean.index):
            for j, col in enumerate(table.mean.columns):
                dims = dict(fixed or {})
                if table.block_dim:
                    dims[table.block_dim], dims[table.rows] = key
                else:
                    dims[table.rows] = key
                dims[table.cols] = col
                if table.mean.iat[i, j] != table.mean.iat[i, j]:
                    continue  # no cell of ours: nothing to compare with
                hit = _published_for(index, dims, heads, places, model, pretrained, blocks)
                if hit is not None:
                    values.iat[i, j], sources.iat[i, j] = hit.value, hit.source
                    found.setdefault(hit.source, hit.where)
    table.published, table.published_source = values, sources
    if found:
        table.notes.append(PUBLISHED_NOTE + " Sources: " + "; ".join(f"{s}, {w}" for s, w in found.items()) + ".")
    else:
        table.notes.append("Published numbers: none in the ledger matches a cell of this table (`featbench published` "
                           "lists them).")
    return table


def _plain_heads(prepared) -> dict:
    """Head label -> registry head, for labels that name a head's paper-default setting (nothing else)."""
    out = {}
    for head, label, over in zip(prepared["head"], prepared["head_label"], prepared["has_overrides"]):
        head = str(head)
        if not over and label in (head, display_name(head)):
            out[label] = head
    return out


def _published_for(index, dims: dict, heads: dict, places: dict, model: str, pretrained: str, blocks):
    if blocks is not None:  # base-to-new: blocks are heads (or "head (k-shot)"), columns Base / New / H
        label, shots = blocks.get(dims.get("head"), (None, None))
        protocol, split = "base-to-new", _B2N_SPLITS.get(str(dims.get("classes")))
    else:
        label, shots, split = dims.get("head"), dims.get("shots"), "all"
        protocol = "few-shot"
    head = heads.get(label)
    if head is None or split is None or shots is None:
        return None
    place = dims.get("dataset")
    if place == AVERAGE and places.get(AVERAGE, ()) is not None:
        dataset = "average"
    elif place in places and places[place] is not None:
        dataset, source = places[place]
        if source != dataset and blocks is None:
            protocol = "domain-generalisation"
    else:
        return None
    return index.find(head=head, model=model, pretrained=pretrained, dataset=dataset, shots=int(shots),
                      protocol=protocol, split=split)

def _table_rows(df, metric, protocol, model, pretrained, names, **picked):
    """The prepared "all" rows of one table: encoder filter, :func:`prepare`, then the --heads/--shots/--datasets
    filters (each step an error when it leaves nothing)."""
    if model is not None or pretrained is not None:
        df = filter_encoder(df, model, pretrained)
    prepared = prepare(df, metric=metric, protocol=protocol, names=names)
    prepared = keep_rows(prepared, prepared["classes"] == "all")
    if prepared.empty:
        raise FeatbenchError("the result rows are all base-to-new rows; use `featbench table --base-to-new`")
    prepared = filter_rows(prepared, **picked)
    if prepared.empty:
        raise FeatbenchError("no result rows left after filtering by --heads/--shots/--datasets")
    return prepared.reset_index(drop=True)


# -- accuracy against trainable parameters (--cols params) -----------------------------------------------------
def param_cells(prepared):
    """Per (head, dataset, shots) cell the lowest and highest ``trainable_params`` of its rows (NaN when a row
    lacks the count: unknown, never 0), plus "Average" rows: the mean over the datasets of each, only where
    every dataset has a known count. Columns: head, dataset, shots, low, high."""
    import numpy as np
    import pandas as pd

    raw = prepared["trainable_params"] if "trainable_params" in prepared.columns else None
    counts = pd.Series(np.nan, index=prepared.index) if raw is None else pd.to_numeric(raw, errors="coerce")
    frame = pd.DataFrame({"head": prepared["head_label"], "dataset": prepared["dataset_label"],
                          "shots": prepared["shots"], "p": counts.astype(float)})
    g = frame.groupby(["head", "dataset", "shots"], sort=False)["p"]
    per = pd.DataFrame({"low": g.min(), "high": g.max()})
    per.loc[(g.count() < g.size()).to_numpy(), ["low", "high"]] = np.nan  # a row without a count: unknown
    per = per.reset_index()
    n_ds = frame["dataset"].nunique()
    avg = per.groupby(["head", "shots"], sort=False).agg(low=("low", "mean"), high=("high", "mean"),
                                                         known=("low", "count"))
    avg.loc[(avg["known"] < n_ds).to_numpy(), ["low", "high"]] = np.nan
    avg = avg.drop(columns="known").reset_index().assign(dataset=AVERAGE)
    return pd.concat([per, avg[per.columns]], ignore_index=True)


def aggregate_params(df, metric: str = "acc", rows: str = "head", protocol: str | None = None, *,
                     heads: Iterable[str] | None = None, shots: Iterable[int] | None = None,
                     datasets: Iterable[str] | None = None, model: str | None = None, pretrained: str | None = None,
                     names: str = "registry") -> Table:
    """Accuracy against trainable parameters, as ELEVATER reports it (``--cols params``): heads as rows, a
    "Trainable params" column (``Table.params``: each row's lowest and highest count over its shot columns)
    and one accuracy column per shot count.

    ``rows="head"``: the dataset Average (or the one dataset); ``rows="dataset"``: a block of heads per dataset
    (their exact counts) and the Average block (the mean of the datasets' counts: class counts differ).
    """
    import pandas as pd

    if rows not in ("head", "dataset"):
        raise FeatbenchError(f"--cols params puts heads in rows and shots in columns; give --rows head (the average) "
                             f"or --rows dataset (a block per dataset), not --rows {rows}")
    prepared = _table_rows(df, metric, protocol, model, pretrained, names, heads=heads, shots=shots, datasets=datasets)
    cells = cell_stats(prepared).merge(param_cells(prepared), on=["head", "dataset", "shots"], how="left")
    found = order_datasets(prepared["dataset_label"])
    blocks = found if len(found) == 1 else ([AVERAGE] if rows == "head" else found + [AVERAGE])
    block_dim = "dataset" if len(blocks) > 1 else None
    head_order, shot_order = order_heads(prepared), sorted(set(int(s) for s in prepared["shots"]))
    cells = cells[cells["dataset"].isin(blocks)]
    keys = ["dataset", "head"] if block_dim else ["head"]
    if block_dim:
        index = pd.MultiIndex.from_tuples([(b, h) for b in blocks for h in head_order], names=keys)
    else:
        index = pd.Index(head_order, name="head")

    def pivot(value, aggfunc="first"):
        piv = cells.pivot_table(index=keys, columns="shots", values=value, aggfunc=aggfunc, dropna=False)
        return piv.reindex(index=index, columns=shot_order)

    mean, std, n = pivot("mean").astype(float), pivot("std").astype(float), pivot("n").fillna(0).astype(float)
    flags = {k: pivot(k, "max").fillna(False).astype(bool) for k in ("oracle", "transductive")}
    present = mean.notna()
    low, high = pivot("low").astype(float).where(present), pivot("high").astype(float).where(present)
    unknown = (present & low.isna()).any(axis=1)
    params = pd.DataFrame({"low": low.min(axis=1), "high": high.max(axis=1)}).where(~unknown).assign(unknown=unknown)
    # a head missing from the Average (not every dataset has it) keeps its row there, its cells shown missing
    only_average = blocks == [AVERAGE]
    in_average = mean.index.get_level_values(0) == AVERAGE if block_dim else [only_average] * len(mean)
    keep = present.any(axis=1) | pd.Series(in_average, index=mean.index)
    table = Table(mean=mean[keep], std=std[keep], n=n[keep], oracle=flags["oracle"][keep],
                  transductive=flags["transductive"][keep], rows="head", cols="shots", block_dim=block_dim,
                  metric=metric, protocol=protocol, overrides=bool(prepared["has_overrides"].any()),
                  params=params[keep])
    table.rank = _rank(table.mean, table.flagged())
    table.notes += _notes(prepared, "dataset" if blocks == [AVERAGE] else "shots")
    table.notes.append(_params_note(AVERAGE in blocks, len(found)))
    return table


def _params_note(has_average: bool, n_datasets: int) -> str:
    note = ("Trainable params: what each head's fit trained (0: training-free; CSV: the exact counts); a range "
            "where the count changes with the shots (Tip-Adapter-F, APE-T: per training image) or the run")
    if has_average:
        note += f"; averaged over datasets: the mean of the {n_datasets} datasets' counts (their class counts differ)"
    return note + "."


def _with_average(datasets: list[str], rows: str, cols: str) -> list[str]:
    """The dataset order plus "Average", which a table with one dataset as rows or columns would only repeat."""
    if len(datasets) == 1 and "dataset" in (rows, cols):
        return datasets
    return datasets + [AVERAGE]


def _notes(prepared, block: str) -> list[str]:
    """The notes under a table: encoders, what the cells average, what a label's (k=v) means."""
    notes = []
    names = sorted(set(prepared["dataset_label"]))
    n_ds = len(names)
    pairs = prepared[["model", "pretrained"]].drop_duplicates()
    encoders = sorted({encoder_label(m, p) for m, p in zip(pairs["model"], pairs["pretrained"])})
    if len(encoders) == 1:
        notes.append(f"Encoder: {encoders[0]}.")
    else:
        notes.append(f"Encoders: {', '.join(encoders)} (each head row names its encoder; never averaged across them).")
    if "fit_device" in prepared.columns:  # outside a row's identity, so said here when the cells mix devices
        devices = prepared["fit_device"].dropna().astype(str).value_counts()
        if len(devices) > 1:
            notes.append("Fit devices: " + ", ".join(f"{d} ({n} rows)" for d, n in sorted(devices.items())) + ".")
    if n_ds == 1:
        notes.append(f"Dataset: {names[0]}.")
    elif block == "dataset":
        notes.append(f"Each cell: mean over the {n_ds} datasets, shown only where every dataset has it.")
    else:
        notes.append(f"{AVERAGE}: mean over the {n_ds} datasets, shown only where every dataset has the cell.")
    if prepared["has_overrides"].any():
        notes.append(OVERRIDES_NOTE)
    return notes


def aggregate_by_encoder(df, **kwargs) -> list[tuple[str, Table]]:
    """One :class:`Table` per encoder (model/pretrained), in name order: what ``featbench table`` prints.

    ``kwargs`` are those of :func:`aggregate` (or of ``build``, e.g. ``featbench.b2n_table.aggregate_base_to_new``). An encoder
    left without rows by the filters is left out.
    """
    build = kwargs.pop("build", None) or aggregate
    if kwargs.get("model") is not None or kwargs.get("pretrained") is not None:
        df = filter_encoder(df, kwargs.pop("model", None), kwargs.pop("pretrained", None))
    kwargs.pop("model", None)
    kwargs.pop("pretrained", None)
    df = df.copy(deep=False)
    for col in ("model", "pretrained"):
        if col not in df.columns:
            df[col] = ""
    pairs = df.groupby(["model", "pretrained"], sort=False, dropna=False).ngroup()
    firsts = pairs.reset_index(drop=True).drop_duplicates()  # index: each pair's first position
    label_of = {code: encoder_label(df["model"].iat[i], df["pretrained"].iat[i]) for i, code in firsts.items()}
    labels = pairs.map(label_of)
    out, first_error = [], None
    for enc in sorted(set(label_of.values())):
        try:
            out.append((enc, build(keep_rows(df, labels == enc), **kwargs)))
        except FeatbenchError as err:
            if not any(m in str(err) for m in ("no result rows", "have no", "base-to-new rows")):
                raise  # a real error, not "this encoder has nothing left to show"
            first_error = first_error or err
    if not out:
        raise first_error
    return out


def _rank(mean, flagged=None):
    """Rank heads by their mean over the table's columns (without "Average"); rows with a gap, or with a cell
    built on test-set selection or a fallback (``flagged``), get no rank: they never compete with honest ones."""
    import pandas as pd

    use = mean[[c for c in mean.columns if c != AVERAGE]]
    honest = use.notna().all(axis=1)
    if flagged is not None:
        honest &= ~flagged.any(axis=1)
    score = use.mean(axis=1).where(honest)
    if isinstance(mean.index, pd.MultiIndex):
        ranks = score.groupby(level=0, sort=False).rank(ascending=False, method="min")
    else:
        ranks = score.rank(ascending=False, method="min")
    return ranks


__all__ = ["load_results", "result_files", "row_sources", "check_result_row", "RowReader", "TABLE_FIELDS",
           "PER_CLASS_FIELDS", "NAMES", "check_names", "display_name", "filter_rows",
           "prepare", "cell_stats", "aggregate", "aggregate_by_encoder", "aggregate_params", "param_cells",
           "render", "render_groups", "latex_escape", "filter_encoder", "encoder_label",
           "check_decimals", "Table", "attach_published"]
