"""The statistical verdict that `featbench compare` prints first: is head B's top-1 accuracy different from A's
beyond the noise of the few-shot seeds and of the finite test set?

Rows of A and B are matched on (encoder, dataset, shots, seed), after the --datasets/--shots/--protocol filters.
A (dataset, shots) cell with two or more matched seeds gets a paired t test over its seeds (the per-seed
differences B - A; df = seeds - 1). A cell with one seed gets a bootstrap over its test images: exact and paired
when both rows name saved predictions (`fit --save-predictions`, found in `compare --predictions DIR`), with
McNemar's exact test beside it; otherwise from the rows' per-class counts, which do not say which images both
heads got right, so A and B are resampled independently per class (an interval usually wider than the paired
one, and said so in the output). Per encoder, "overall" is a paired t test over all matched (dataset, shots,
seed) differences (df = their number - 1). The bootstrap's seed is fixed: the same command prints the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featbench import stats
from featbench.errors import FeatbenchError, short_repr
from featbench.npyfiles import load_npz
from featbench.perclass import class_counts, row_source, select_pair


@dataclass
class CellVerdict:
    encoder: str
    dataset: str
    shots: int
    seeds: list[int]
    diff: float  # mean B - A over the seeds, points
    estimate: stats.Estimate | None  # None: one seed and nothing to resample (no per-class counts)
    source: str = ""  # "predictions" | "counts" | "" (t test / none)
    mcnemar: tuple[int, int, float] | None = None


@dataclass
class Verdict:
    head_a: str
    head_b: str
    resamples: int
    cells: list[CellVerdict]
    overall: dict[str, stats.Estimate] = field(default_factory=dict)  # per encoder, with >= 2 differences
    skipped: list[str] = field(default_factory=list)  # cells of both heads without a shared seed
    unused_predictions: bool = False  # rows name saved predictions but no --predictions folder was given


# -- matching rows ---------------------------------------------------------------------------------------------
def _groups(sub) -> dict:
    from featbench.tables import encoder_label

    out = {}
    for _, r in sub.iterrows():
        key = (encoder_label(r["model"], r["pretrained"]), r["dataset_label"], int(r["shots"]))
        out.setdefault(key, {})[int(r["seed"])] = r
    return out


def _listing(values) -> str:
    shown = [str(v) for v in sorted(values)]
    return ",".join(shown[:8]) + (",..." if len(shown) > 8 else "") if shown else "none"


def mismatch(groups_a: dict, groups_b: dict, head_a: str, head_b: str) -> str:
    """One line on why no cell matches: each of encoder, dataset, shots and seed whose values differ."""
    parts = []
    for i, dim in enumerate(("encoders", "datasets", "shots", "seeds")):
        if dim == "seeds":
            va = {s for seeds in groups_a.values() for s in seeds}
            vb = {s for seeds in groups_b.values() for s in seeds}
        else:
            va, vb = {k[i] for k in groups_a}, {k[i] for k in groups_b}
        if va != vb:
            parts.append(f"{head_a} has {dim} {_listing(va)}; {head_b} has {_listing(vb)}")
    why = "; ".join(parts) if parts else "no (encoder, dataset, shots, seed) combination is in both"
    return (f"--heads {head_a},{head_b}: no matched cells (same encoder, dataset, shots and seed): {why}; "
            "run the missing cells or change --datasets/--shots/--protocol")


# -- one cell --------------------------------------------------------------------------------------------------
def load_hits(folder: Path, row) -> tuple[np.ndarray, np.ndarray]:
    """(per-image hit, labels) from the row's saved predictions in ``folder``; checked against the row's acc."""
    name = str(row["predictions"])
    if Path(name).name != name or name in ("", ".", ".."):
        raise FeatbenchError(f"{row_source(row)}: 'predictions' must be a file name, got {short_repr(name)}")
    path = Path(folder) / name
    if not path.is_file():
        raise FeatbenchError(f"--predictions {folder}: no {name} (named by {row_source(row)}); pass the folder given "
                             "to `fit --save-predictions`")
    pred, label = _read_predictions(path)
    hits = pred == label
    if abs(100.0 * hits.mean() - float(row["acc"])) > 1e-6:
        raise FeatbenchError(f"{path}: its predictions do not give the acc of {row_source(row)}; the file belongs to "
                             "another run: rerun the fit with --save-predictions")
    return hits, label


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 'pred' and 'label' arrays of a `fit --save-predictions` file: 1-d, integer, one length, not empty
    (each member's header checked against its size before numpy allocates it)."""
    bad = f"{path}: not a featbench predictions file"
    arrays = load_npz(path, bad, "remove it and rerun the fit with --save-predictions")
    if "pred" not in arrays or "label" not in arrays:
        raise FeatbenchError(f"{bad} (no 'pred' and 'label' arrays); remove it and rerun the fit with --save-predictions")
    pred, label = np.asarray(arrays["pred"]), np.asarray(arrays["label"])
    if pred.ndim != 1 or pred.shape != label.shape or pred.size == 0 or not (
            pred.dtype.kind in "iu" and label.dtype.kind in "iu"):
        raise FeatbenchError(f"{bad} ('pred' and 'label' must be non-empty 1-d integer arrays of one length); "
                             "rerun the fit with --save-predictions")
    return pred, label


def _one_seed(ra, rb, predictions: Path | None, resamples: int):
    """Bootstrap of one seed: paired from saved predictions when there are some, else from per-class counts."""
    if predictions is not None and _has(ra, "predictions") and _has(rb, "predictions"):
        hits_a, labels_a = load_hits(predictions, ra)
        hits_b, labels_b = load_hits(predictions, rb)
        if labels_a.shape != labels_b.shape or not np.array_equal(labels_a, labels_b):
            raise FeatbenchError(f"{row_source(ra)} and {row_source(rb)}: the saved predictions are of different "
                                 "test sets; compare rows of the same cache")
        est = stats.paired_bootstrap(hits_a, hits_b, resamples=resamples)
        return est, "predictions", stats.mcnemar_exact(hits_a, hits_b)
    pa, pb = class_counts(ra), class_counts(rb)
    if pa is None or pb is None:
        return None, "", None
    if not np.array_equal(pa[1], pb[1]):
        raise FeatbenchError(f"{row_source(ra)} and {row_source(rb)}: the per-class counts are of different test sets; "
                             "compare rows of the same cache")
    est = stats.unpaired_bootstrap(pa[0], pb[0], pa[1], resamples=resamples)
    return est, "counts", None


def _has(row, key: str) -> bool:
    value = row.get(key)
    return isinstance(value, str) and bool(value)


# -- the verdict -----------------------------------------------------------------------------------------------
def verdict(df, head_a: str, head_b: str, *, datasets=None, shots=None, metric_protocol: str | None = None,
            predictions: str | Path | None = None, resamples: int = stats.RESAMPLES) -> Verdict:
    """Tests of B - A (top-1 accuracy, points) per matched (encoder, dataset, shots) and overall per encoder."""
    resamples = stats.check_resamples(resamples)
    if predictions is not None and not Path(predictions).is_dir():
        raise FeatbenchError(f"--predictions {predictions}: not a folder; give the folder of `fit --save-predictions`")
    a, b = select_pair(df, head_a, head_b, datasets=datasets, shots=shots, metric_protocol=metric_protocol)
    groups_a, groups_b = _groups(a), _groups(b)
    out = Verdict(head_a, head_b, resamples, [])
    diffs: dict[str, list[float]] = {}
    for key in sorted(set(groups_a) & set(groups_b)):
        seeds = sorted(set(groups_a[key]) & set(groups_b[key]))
        if not seeds:
            out.skipped.append(f"{key[1]}, {key[2]}-shot ({key[0]}): {head_a} has seeds "
                               f"{_listing(groups_a[key])}, {head_b} has {_listing(groups_b[key])}")
            continue
        acc_a = [float(groups_a[key][s]["acc"]) for s in seeds]
        acc_b = [float(groups_b[key][s]["acc"]) for s in seeds]
        diffs.setdefault(key[0], []).extend(y - x for x, y in zip(acc_a, acc_b))
        cell = CellVerdict(key[0], key[1], key[2], seeds, float(np.mean(acc_b) - np.mean(acc_a)), None)
        if len(seeds) >= 2:
            cell.estimate = stats.paired_t(acc_a, acc_b)
        else:
            ra, rb = groups_a[key][seeds[0]], groups_b[key][seeds[0]]
            cell.estimate, cell.source, cell.mcnemar = _one_seed(ra, rb, _path(predictions), resamples)
            out.unused_predictions |= predictions is None and _has(ra, "predictions") and _has(rb, "predictions")
        out.cells.append(cell)
    if not out.cells:
        raise FeatbenchError(mismatch(groups_a, groups_b, head_a, head_b))
    for enc, d in diffs.items():
        n_cells = sum(1 for c in out.cells if c.encoder == enc)
        if len(d) >= 2 and n_cells >= 2:
            out.overall[enc] = stats.paired_t(np.zeros(len(d)), d)
    return out


def _path(predictions) -> Path | None:
    return None if predictions is None else Path(predictions)


# -- text ------------------------------------------------------------------------------------------------------
def _interval(est: stats.Estimate) -> str:
    return f"{est.diff:+.2f} [95% CI {est.low:+.2f}, {est.high:+.2f}], {stats.format_p(est.p)}"


def _how(cell: CellVerdict, resamples: int) -> str:
    est = cell.estimate
    if cell.source == "predictions":
        n01, n10, p = cell.mcnemar
        return (f"paired bootstrap over {est.n} test images from saved predictions, {resamples} resamples; "
                f"McNemar exact {stats.format_p(p)}: {n01} images only B got right, {n10} only A")
    if cell.source == "counts":
        return (f"bootstrap over {est.n} test images from per-class counts, {resamples} resamples, "
                "A and B resampled independently*")
    return f"paired t over {est.n} seeds, df = {est.df}"


def render(v: Verdict) -> str:
    """The verdict as plain text: one line per cell, an overall line per encoder, then what the marks mean."""
    lines = [f"Statistics: B - A = {v.head_b} - {v.head_a}, top-1 accuracy in points, 95% CI, two-sided p"]
    encoders = list(dict.fromkeys(c.encoder for c in v.cells))
    for enc in encoders:
        lines.append(f"{enc}:")
        for c in (c for c in v.cells if c.encoder == enc):
            label = f"  {c.dataset}, {c.shots}-shot, seed{'s' if len(c.seeds) > 1 else ''} {_listing(c.seeds)}: "
            if c.estimate is None:
                lines.append(label + f"{c.diff:+.2f} (one seed and no per-class counts: no test)")
            else:
                lines.append(label + f"{_interval(c.estimate)} ({_how(c, v.resamples)})")
        if enc in v.overall:
            est = v.overall[enc]
            n_cells = sum(1 for c in v.cells if c.encoder == enc)
            lines.append(f"  overall, {est.n} differences over {n_cells} dataset x shots cells: {_interval(est)} "
                         f"(paired t over the (dataset, shots, seed) differences, df = {est.df})")
    if any(c.source == "counts" for c in v.cells):
        lines.append("* the per-class counts do not say which images both heads got right, so this interval "
                     "ignores the pairing and is usually wider than the paired one"
                     + ("; pass --predictions DIR (the rows name saved predictions) for the exact paired test"
                        if v.unused_predictions else "; `fit --save-predictions DIR` and `compare --predictions "
                        "DIR` give the exact paired test"))
    for s in v.skipped:
        lines.append(f"not tested (no shared seed): {s}")
    return "\n".join(lines) + "\n"


__all__ = ["Verdict", "CellVerdict", "verdict", "render", "mismatch", "load_hits"]
