"""Accuracy-vs-shots curves, as the few-shot papers draw them: one panel per dataset plus an "Average" panel,
one line per head (mean over seeds) with a ±std band, log2 x axis with ticks at the shot counts.

Aggregation comes from :mod:`featbench.tables` (same head labelling, ddof=0 std, the same "Average only where
every dataset has the point" rule), so a plot never disagrees with the table printed next to it.
Uses matplotlib's object API on the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path

from featbench.errors import FeatbenchError

PLOT_SUFFIXES = (".png", ".pdf")
DEFAULT_STEM = "accuracy-vs-shots"


def output_stem(out: str | Path) -> Path:
    """Where ``--out`` puts the figure: a path ending in .png/.pdf is a stem (both files are written next to
    each other, e.g. ``fig.png`` + ``fig.pdf``); anything else is a directory (created) that receives
    ``accuracy-vs-shots.png`` and ``accuracy-vs-shots.pdf``."""
    out = Path(out)
    if out.suffix.lower() in PLOT_SUFFIXES:
        return out.with_suffix("")
    return out / DEFAULT_STEM


def plot_curves(df, out: str | Path, *, metric: str = "acc", protocol: str | None = None,
                ncols: int = 4, dpi: int = 150, title: str | None = None) -> list[Path]:
    """Draw the curves of result rows ``df`` (from :func:`featbench.tables.load_results`); return the files."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    from featbench import tables

    prepared = tables.prepare(df, metric=metric, protocol=protocol)
    prepared = prepared[prepared["classes"] == "all"].reset_index(drop=True)  # base-to-new rows have no curve
    if prepared.empty:
        raise FeatbenchError("no accuracy-vs-shots rows: base-to-new rows are shown by `featbench table --base-to-new`")
    cells = tables.cell_stats(prepared)
    heads = tables._order_heads(prepared)
    datasets = tables._order_datasets(prepared["dataset_label"])
    panels = datasets + ([tables.AVERAGE] if len(datasets) > 1 else [])
    shots_all = sorted({int(s) for s in prepared["shots"]})

    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.7 * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = _colors(len(heads))
    markers = "osD^vP*Xh<>p"
    handles: dict[str, object] = {}
    any_oracle = False
    for k, panel in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        sub = cells[cells["dataset"] == panel]
        for h, head in enumerate(heads):
            line = sub[(sub["head"] == head) & sub["mean"].notna()].sort_values("shots")
            if line.empty:
                continue
            x = line["shots"].to_numpy(dtype=float)
            y = line["mean"].to_numpy(dtype=float)
            s = line["std"].fillna(0.0).to_numpy(dtype=float)
            oracle = bool(line["oracle"].any())
            any_oracle |= oracle
            (ln,) = ax.plot(x, y, color=colors[h], marker=markers[h % len(markers)], markersize=3.5,
                            linewidth=1.4, linestyle="--" if oracle else "-",
                            label=head + (" †" if oracle else ""))
            ax.fill_between(x, y - s, y + s, color=colors[h], alpha=0.15, linewidth=0)
            handles.setdefault(head, ln)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(shots_all))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(shots_all, [str(s) for s in shots_all])
        if len(shots_all) == 1:
            ax.set_xlim(shots_all[0] / 1.5, shots_all[0] * 1.5)
        ax.set_title(panel, fontsize=10, fontweight="bold" if panel == tables.AVERAGE else "normal")
        ax.grid(True, alpha=0.3, linewidth=0.5)
        ax.tick_params(labelsize=8)
        if k % ncols == 0:
            ax.set_ylabel(tables._METRIC_NAMES.get(metric, metric), fontsize=9)
        if k // ncols == nrows - 1 or k + ncols >= len(panels):
            ax.set_xlabel("shots per class", fontsize=9)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    if not handles:
        raise FeatbenchError("nothing to plot: no result row has a value for this metric")
    labels = [h.get_label() for h in handles.values()]
    fig.legend(list(handles.values()), labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8,
               frameon=False)
    note = "lines: mean over seeds; bands: ± population std"
    if any_oracle:
        note += "   † dashed: hyperparameters selected on the test set (oracle protocol)"
    fig.suptitle((title + "\n" if title else "") + note, fontsize=8)

    stem = output_stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in PLOT_SUFFIXES:
        path = stem.with_suffix(suffix)
        # fixed metadata keeps the files reproducible run to run
        meta = {"Software": None} if suffix == ".png" else {"Creator": "featbench", "Producer": None,
                                                            "CreationDate": None}
        fig.savefig(path, dpi=dpi, metadata=meta)
        written.append(path)
    return written


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


__all__ = ["plot_curves", "output_stem"]
