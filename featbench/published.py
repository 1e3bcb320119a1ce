"""Numbers the papers publish, as data: the ledger shipped in ``featbench/published_data/ledger.csv``.

Reading checks every row once (types, 0-100 values, known shots/protocols/splits, one row per key), so tables
and the ``featbench published`` listing can trust what they get. No pandas: the ledger is a few hundred rows.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from featbench.errors import FeatbenchError

LEDGER = Path(__file__).resolve().parent / "published_data" / "ledger.csv"
COLUMNS = ("head", "model", "pretrained", "dataset", "shots", "protocol", "split", "value", "aggregation",
           "source", "where", "note")
PROTOCOLS = ("few-shot", "base-to-new", "domain-generalisation")
SPLITS = {"few-shot": ("all",), "base-to-new": ("base", "new", "H"), "domain-generalisation": ("all",)}
#: 0 marks a zero-shot number: it needs no shots and stands for every shot count
SHOTS = (0, 1, 2, 4, 8, 16)
AVERAGE = "average"
#: the datasets a ledger "average" is the mean over (CoOp's eleven)
AVERAGED = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101")
FORMATS = ("markdown", "csv")
_REQUIRED = ("head", "model", "pretrained", "dataset", "protocol", "split", "source", "where")


@dataclass(frozen=True)
class Published:
    """One published number and where it comes from."""

    head: str
    model: str
    pretrained: str
    dataset: str
    shots: int
    protocol: str
    split: str
    value: float
    aggregation: str
    source: str
    where: str
    note: str

    @property
    def key(self) -> tuple:
        """What a number is of: no two ledger rows share it."""
        return (self.head, self.model, self.pretrained, self.dataset, self.shots, self.protocol, self.split)


def read_ledger(path: str | Path | None = None) -> list[Published]:
    """The validated rows of a ledger file (the shipped one by default)."""
    path = Path(path) if path is not None else LEDGER
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise FeatbenchError(f"{path}: cannot read the published-numbers ledger ({err.strerror or err})") from None
    return parse_ledger(text, str(path))


def parse_ledger(text: str, where: str = "ledger.csv") -> list[Published]:
    """Rows of ledger CSV text, checked: the header, each field's type and range, and unique keys."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _read_rows(reader, where)
    except csv.Error as err:
        raise FeatbenchError(f"{where}:{reader.line_num}: not valid CSV ({err}); quote fields that hold commas, "
                             "quotes or line breaks") from None


def _read_rows(reader: csv.DictReader, where: str) -> list[Published]:
    header = tuple(reader.fieldnames or ())
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise FeatbenchError(f"{where}: the ledger lacks the column(s) {', '.join(missing)}; the header must be "
                             f"{','.join(COLUMNS)}")
    rows, seen = [], {}
    for raw in reader:
        lineno = reader.line_num
        row = _check_row(raw, f"{where}:{lineno}")
        if row.key in seen:
            raise FeatbenchError(f"{where}:{lineno}: the same number as line {seen[row.key]} "
                                 f"({_describe(row)}); keep one row per number")
        seen[row.key] = lineno
        rows.append(row)
    return rows


def _check_row(raw: dict, at: str) -> Published:
    if None in raw or any(v is None for v in raw.values()):
        raise FeatbenchError(f"{at}: the row has {'more' if None in raw else 'fewer'} fields than the header; "
                             "quote fields that hold commas")
    vals = {c: raw[c].strip() for c in COLUMNS}
    broken = next((c for c in COLUMNS if "\n" in vals[c] or "\r" in vals[c]), None)
    if broken:
        raise FeatbenchError(f"{at}: the '{broken}' field holds a line break; keep each number on one line")
    for col in _REQUIRED:
        if not vals[col]:
            raise FeatbenchError(f"{at}: the '{col}' field is empty; every number names its {col}")
    shots = _int(vals["shots"], at)
    if shots not in SHOTS:
        raise FeatbenchError(f"{at}: shots {vals['shots']!r} is not one of {', '.join(map(str, SHOTS))}")
    value = _float(vals["value"], at)
    if not 0.0 <= value <= 100.0:
        raise FeatbenchError(f"{at}: value {vals['value']} is outside 0-100; give top-1 accuracy in %")
    proto = vals["protocol"]
    if proto not in PROTOCOLS:
        raise FeatbenchError(f"{at}: protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    if vals["split"] not in SPLITS[proto]:
        raise FeatbenchError(f"{at}: split {vals['split']!r} does not fit protocol {proto} "
                             f"(use {', '.join(SPLITS[proto])})")
    return Published(**{**vals, "shots": shots, "value": value})


def _int(text: str, at: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FeatbenchError(f"{at}: shots {text!r} is not a whole number") from None


def _float(text: str, at: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FeatbenchError(f"{at}: value {text!r} is not a number") from None
    if value != value:
        raise FeatbenchError(f"{at}: value {text!r} is not a number")
    return value


def _describe(row: Published) -> str:
    return (f"{row.head} {row.model}/{row.pretrained} {row.dataset} {row.shots}-shot {row.protocol}"
            + ("" if row.split == "all" else f" {row.split}"))


def select(rows: Iterable[Published], *, head: str | None = None, dataset: str | None = None,
           model: str | None = None, pretrained: str | None = None, shots: Iterable[int] | None = None,
           protocol: str | None = None) -> list[Published]:
    """The rows that match every given filter (``shots`` keeps zero-shot rows, which stand for any count)."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise FeatbenchError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    wanted = None if shots is None else set(shots)
    if wanted is not None and min(wanted, default=1) < 1:
        raise FeatbenchError(f"--shots {min(wanted)}: shot counts are 1 or more (zero-shot numbers are listed with "
                             "every count)")
    return [r for r in rows
            if (head is None or r.head == head) and (dataset is None or r.dataset == dataset)
            and (model is None or r.model == model) and (pretrained is None or r.pretrained == pretrained)
            and (protocol is None or r.protocol == protocol)
            and (wanted is None or r.shots in wanted or r.shots == 0)]


class Index:
    """Lookups by key: the number published for one of our cells, if any."""

    def __init__(self, rows: Iterable[Published]):
        self._by_key = {r.key: r for r in rows}

    def find(self, *, head: str, model: str, pretrained: str, dataset: str, shots: int, protocol: str,
             split: str = "all") -> Published | None:
        for k in (int(shots), 0):  # a zero-shot number stands for every shot count
            hit = self._by_key.get((head, model, pretrained, dataset, k, protocol, split))
            if hit is not None:
                return hit
        return None


@functools.lru_cache(maxsize=1)
def shipped_index() -> Index:
    """The shipped ledger, read and checked once per process (every table of a run looks it up)."""
    return Index(read_ledger())


def format_rows(rows: list[Published], fmt: str = "markdown") -> str:
    """The rows as a Markdown table (value first, then the source) or as ledger CSV."""
    if fmt not in FORMATS:
        raise FeatbenchError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**asdict(r), "value": f"{r.value:.2f}"})
        return buf.getvalue()
    head = ("head", "model", "dataset", "shots", "protocol", "split", "value", "source", "where")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] * 6 + ["---:", ":---", ":---"]) + "|"]
    for r in rows:
        cells = (r.head, f"{r.model} ({r.pretrained})", r.dataset, "0 (zero-shot)" if r.shots == 0 else str(r.shots),
                 r.protocol, r.split, f"{r.value:.2f}", r.source, r.where)
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines += ["", f"{len(rows)} published number{'s' if len(rows) != 1 else ''}; notes and aggregation: "
                  "--format csv."]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", r"\|").replace("\n", " ")


__all__ = ["LEDGER", "COLUMNS", "PROTOCOLS", "SPLITS", "SHOTS", "AVERAGE", "AVERAGED", "Published", "Index", "read_ledger",
           "parse_ledger", "select", "shipped_index", "format_rows"]
