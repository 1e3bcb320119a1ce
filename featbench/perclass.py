"""Per-class comparison of two heads: which classes a head fixes or breaks (`featbench compare`).

Every result row stores ``per_class = {"correct": [...], "total": [...]}`` (label order). For each encoder,
dataset and shot count that both heads were run on, the counts are pooled over the seeds both heads share, so
a class's accuracy is (correct over seeds) / (test images over seeds), and the delta is B - A in points.
Class names come from the cache the rows name (when that file is still there), else "class <index>".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featbench.errors import FeatbenchError
from featbench.table_model import display_name


@dataclass
class Comparison:
    encoder: str
    dataset: str
    shots: int
    seeds: list[int]
    classnames: list[str]
    acc_a: list[float]
    acc_b: list[float]
    total: list[int]

    def deltas(self) -> list[tuple[int, float]]:
        """(class index, B - A) sorted from the largest gain to the largest loss (ties by class index)."""
        d = [(i, b - a) for i, (a, b) in enumerate(zip(self.acc_a, self.acc_b)) if self.total[i] > 0]
        return sorted(d, key=lambda t: (-t[1], t[0]))


#: class names longer than this are cut (with "…") so that a table of gains and losses stays readable
MAX_CLASSNAME = 40


def row_source(row) -> str:
    """file:line of a row from featbench.result_reader.load_results ("a row" for a hand-made frame)."""
    return f"{row['_file']}:{row['_line']}" if "_file" in row and "_line" in row else "a row"


def short_name(name: str, width: int = MAX_CLASSNAME) -> str:
    """``name`` cut to ``width`` characters, the cut marked with "…"."""
    return name if len(name) <= width else name[: width - 1] + "…"


def _classnames(cache_path, n: int) -> list[str]:
    if cache_path and Path(str(cache_path)).is_file():
        try:
            from featbench.cache import Cache

            with Cache(cache_path) as c:
                names = [str(x) for x in c.classnames]
            if len(names) == n:
                return names
        except Exception:  # a moved or foreign cache: fall back to indices
            pass
    return [f"class {i}" for i in range(n)]


def class_counts(row):
    """The row's per-class (correct, total) counts as int64 numpy arrays, None when the row has none."""
    import numpy as np  # lazy, as pandas: `featbench --help` imports neither

    pc = row.get("per_class")
    if not isinstance(pc, dict):
        return None
    bad = (f"{row_source(row)}: 'per_class' must hold equal-length lists 'correct' and 'total' of counts with "
           "0 <= correct <= total; rerun `featbench fit` into a new results file")
    try:
        correct, total = np.asarray(pc["correct"]), np.asarray(pc["total"])
    except (KeyError, TypeError, ValueError):
        raise FeatbenchError(bad) from None
    if (correct.ndim != 1 or correct.shape != total.shape or correct.dtype.kind not in "iu"
            or total.dtype.kind not in "iu" or (correct < 0).any() or (correct > total).any()):
        raise FeatbenchError(bad)
    return correct.astype(np.int64), total.astype(np.int64)


def match_head(df, head: str):
    """The rows of ``head`` (registry name, paper name or full label); an error when it names several variants."""
    named = {h for h in set(df["head"]) if head in (h, display_name(h))}
    sub = df[df["head"].isin(named) | (df["head_label"] == head)]
    labels = sorted(set(sub["head_label"]))
    if len(labels) > 1:
        raise FeatbenchError(f"--heads {head}: several variants in the results ({'; '.join(labels)}); "
                             "name one of them exactly")
    return sub


def select_pair(df, head_a: str, head_b: str, *, datasets=None, shots=None, metric_protocol: str | None = None):
    """The prepared rows (featbench.tables.prepare) of ``head_a`` and ``head_b`` after the filters, one frame each;
    an error naming the heads present when either has none."""
    from featbench import tables

    if head_a == head_b:
        raise FeatbenchError(f"--heads {head_a},{head_b}: name two different heads")
    prepared = tables.prepare(df, protocol=metric_protocol)
    if "classes" in prepared.columns:  # base-to-new rows carry no per-class counts
        prepared = prepared[prepared["classes"] == "all"]
    if datasets:
        prepared = prepared[prepared["dataset"].isin(set(datasets))]
    if shots:
        prepared = prepared[prepared["shots"].isin(set(shots))]
    a, b = match_head(prepared, head_a), match_head(prepared, head_b)
    for name, sub in ((head_a, a), (head_b, b)):
        if sub.empty:
            have = ", ".join(sorted(set(prepared["head_label"]))) or "none"
            raise FeatbenchError(f"--heads {name}: no rows for this head (after filters); the results have {have}")
    return a, b


def compare(df, head_a: str, head_b: str, *, datasets=None, shots=None, metric_protocol: str | None = None) -> list[Comparison]:
    """Per-class accuracies of ``head_a`` and ``head_b`` per (encoder, dataset, shots) both were run on."""
    from featbench import tables

    if head_a == head_b:
        raise FeatbenchError(f"--heads {head_a},{head_b}: name two different heads")
    if "per_class" not in df.columns or df["per_class"].isna().all():
        raise FeatbenchError("the result rows have no per-class counts (rows written before featbench stored "
                             "them); rerun `featbench fit` into a new results file")
    a, b = select_pair(df, head_a, head_b, datasets=datasets, shots=shots, metric_protocol=metric_protocol)
    out = []
    enc = lambda r: tables.encoder_label(r["model"], r["pretrained"])  # noqa: E731
    groups_a = {}
    for _, r in a.iterrows():
        groups_a.setdefault((enc(r), r["dataset_label"], int(r["shots"])), {})[int(r["seed"])] = r
    groups_b = {}
    for _, r in b.iterrows():
        groups_b.setdefault((enc(r), r["dataset_label"], int(r["shots"])), {})[int(r["seed"])] = r
    for key in sorted(set(groups_a) & set(groups_b), key=lambda k: (k[0], k[1], k[2])):
        seeds = sorted(set(groups_a[key]) & set(groups_b[key]))
        pooled = []
        for rows in (groups_a[key], groups_b[key]):
            correct = total = None
            for s in seeds:
                counts = class_counts(rows[s])
                if counts is None:
                    raise FeatbenchError(f"{row_source(rows[s])}: no per-class counts in this row")
                c, t = counts[0].tolist(), counts[1].tolist()
                correct = c if correct is None else [x + y for x, y in zip(correct, c)]
                total = t if total is None else [x + y for x, y in zip(total, t)]
            pooled.append((correct, total))
        (ca, ta), (cb, tb) = pooled
        if len(ca) != len(cb) or ta != tb:
            raise FeatbenchError(f"{key[1]} ({key[0]}, {key[2]}-shot): the two heads were evaluated on different "
                                 "test sets; compare rows of the same cache")
        acc = lambda c, t: [100.0 * x / y if y else float("nan") for x, y in zip(c, t)]  # noqa: E731
        first = groups_a[key][seeds[0]]
        out.append(Comparison(encoder=key[0], dataset=key[1], shots=key[2], seeds=seeds,
                              classnames=_classnames(first.get("cache"), len(ca)),
                              acc_a=acc(ca, ta), acc_b=acc(cb, tb), total=list(ta)))
    if not out:
        raise FeatbenchError(f"--heads {head_a},{head_b}: no dataset and shot count has rows of both heads")
    return out


def render(comparisons: list[Comparison], head_a: str, head_b: str, top: int = 10) -> str:
    """Plain text: per (encoder, dataset, shots), the overall per-class mean and the largest gains and losses."""
    lines = []
    for c in comparisons:
        d = c.deltas()
        mean_a = sum(x for x, t in zip(c.acc_a, c.total) if t) / max(1, sum(1 for t in c.total if t))
        mean_b = sum(x for x, t in zip(c.acc_b, c.total) if t) / max(1, sum(1 for t in c.total if t))
        better = sum(1 for _, v in d if v > 0)
        worse = sum(1 for _, v in d if v < 0)
        lines.append(f"{c.dataset}, {c.shots}-shot, {c.encoder}, seeds {','.join(map(str, c.seeds))}: "
                     f"{head_b} vs {head_a}: mean per-class accuracy {mean_b:.2f} vs {mean_a:.2f}; "
                     f"{better} classes better, {worse} worse, {len(d) - better - worse} equal")
        width = min(max([len(n) for n in c.classnames] + [5]), MAX_CLASSNAME)
        head = f"  {'class':{width}s}  {head_a[:12]:>12s}  {head_b[:12]:>12s}  {'delta':>7s}"
        gains = [t for t in d if t[1] > 0][:top]
        losses = [t for t in reversed(d) if t[1] < 0][:top]
        for title, part in (("largest gains", gains), ("largest losses", losses)):
            if not part:
                continue
            lines.append(f" {title}:")
            lines.append(head)
            for i, v in part:
                lines.append(f"  {short_name(c.classnames[i], width):{width}s}  {c.acc_a[i]:12.2f}  {c.acc_b[i]:12.2f}  {v:+7.2f}")
        lines.append("")
    return "\n".join(lines)


__all__ = ["compare", "render", "Comparison", "short_name", "MAX_CLASSNAME", "match_head", "select_pair",
           "class_counts", "row_source"]
