"""Accuracy-vs-shots curves, as the few-shot papers draw them: one panel per dataset plus an "Average" panel,
one line per head (mean over seeds) with a ±std band, log2 x axis with ticks at the shot counts.

Aggregation comes from :mod:`featbench.tables` (same head labelling, ddof=0 std, the same "Average only where
every dataset has the point" rule), so a plot never disagrees with the table printed next to it.
Uses matplotlib's object API on the Agg canvas (no pyplot, no display needed). Names from result files and
``--title`` are drawn as plain text (``$`` is never mathtext). The legend wraps into as many columns as fit the
figure's width, so it is never cut off, whatever the panel count.
"""

from __future__ import annotations

import math
from pathlib import Path

from featbench.errors import FeatbenchError
from featbench.heads.paper import DISPLAY_NAMES
from featbench.table_model import format_count

PLOT_SUFFIXES = (".png", ".pdf")
DEFAULT_STEM = "accuracy-vs-shots"
#: ``plot --x``: what the x axis shows, and the file stem a folder ``--out`` receives for it
X_AXES = {"shots": DEFAULT_STEM, "params": "accuracy-vs-params"}
MIN_WIDTH = 4.8  # inches: room for a readable legend even with a single panel


def output_stem(out: str | Path, default: str = DEFAULT_STEM) -> Path:
    """Where ``--out`` puts the figure: a path ending in .png/.pdf is a stem (both files are written next to
    each other, e.g. ``fig.png`` + ``fig.pdf``); anything else is a directory (created) that receives
    ``accuracy-vs-shots.png`` and ``accuracy-vs-shots.pdf``."""
    out = Path(out)
    if out.suffix.lower() in PLOT_SUFFIXES:
        return out.with_suffix("")
    return out / default


def check_output(out: str | Path, default: str = DEFAULT_STEM) -> Path:
    """The stem, after refusing (one line) an ``--out`` that would overwrite or write into something that is not
    a plot: an existing file other than a .png/.pdf, or a .png/.pdf path that is a directory. Re-plotting over
    the .png/.pdf a previous ``plot`` wrote is allowed."""
    out = Path(out)
    stem = output_stem(out, default)
    if out.suffix.lower() not in PLOT_SUFFIXES and out.exists() and not out.is_dir():
        raise FeatbenchError(f"--out {out}: is an existing file, not a folder; give a folder or a path ending in "
                             ".png/.pdf (both files are written)")
    for suffix in PLOT_SUFFIXES:
        target = stem.with_suffix(suffix)
        if target.exists() and not target.is_file():
            raise FeatbenchError(f"--out {out}: {target} exists and is not a file; give another path")
    for parent in [stem.parent, *stem.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise FeatbenchError(f"--out {out}: {parent} is a file, not a folder; give another path")
            break
    return stem


def plain(text) -> str:
    """Text matplotlib draws literally: escaped ``$`` so no mathtext parsing (a label like ``$x^$`` would raise)."""
    return str(text).replace("$", r"\$")


def plot_curves(df, out: str | Path, *, metric: str = "acc", protocol: str | None = None,
                ncols: int = 4, dpi: int = 150, title: str | None = None, x: str = "shots", **pick) -> list[Path]:
    """Draw the curves of result rows ``df`` (from :func:`featbench.result_reader.load_results`); return the files.

    ``x="params"`` draws accuracy against trainable parameters instead (:func:`make_params_figure`).
    ``pick``: ``names``, ``heads``, ``datasets``, ``shots`` as :func:`make_figure` takes them.
    """
    if x not in X_AXES:
        raise FeatbenchError(f"--x must be one of {', '.join(X_AXES)}; got {x!r}")
    stem = check_output(out, X_AXES[x])
    build = make_params_figure if x == "params" else make_figure
    fig = build(df, metric=metric, protocol=protocol, ncols=ncols, title=title, **pick)
    written = []
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        for suffix in PLOT_SUFFIXES:
            path = stem.with_suffix(suffix)
            # fixed metadata keeps the files reproducible run to run
            meta = {"Software": None} if suffix == ".png" else {"Creator": "featbench", "Producer": None,
                                                                "CreationDate": None}
            fig.savefig(path, dpi=dpi, metadata=meta)
            written.append(path)
    except OSError as err:
        raise FeatbenchError(f"--out {out}: cannot write the figure ({err.strerror or err}); give a writable path") from None
    return written


def panel_grid(n_panels: int, ncols: int, *, panel_size: tuple[float, float]):
    """(figure, axes [rows][cols], columns used) for ``n_panels`` panels at most ``ncols`` wide, headroom for a
    legend and title (Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(max(panel_size[0] * ncols, MIN_WIDTH), panel_size[1] * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False), ncols


def make_figure(df, *, metric: str = "acc", protocol: str | None = None, ncols: int = 4, title: str | None = None,
                names: str = "registry", heads=None, datasets=None, shots=None):
    """The matplotlib Figure of :func:`plot_curves` (not saved).

    ``heads``/``datasets``/``shots`` keep only those curves, panels and points (as ``featbench table``'s
    filters do); ``names="paper"`` labels heads by their papers' names.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    from featbench import tables

    prepared = _plot_rows(df, metric, protocol, names, heads=heads, shots=shots, datasets=datasets)
    cells = tables.cell_stats(prepared)
    heads = tables.order_heads(prepared)
    styles = _line_styles(prepared)
    datasets = tables.order_datasets(prepared["dataset_label"])
    panels = datasets + ([tables.AVERAGE] if len(datasets) > 1 else [])
    shots_all = sorted({int(s) for s in prepared["shots"]})

    fig, axes, ncols = panel_grid(len(panels), ncols, panel_size=(3.2, 2.7))
    width = fig.get_figwidth()
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
            color, marker, dashes = styles[head]
            (ln,) = ax.plot(x, y, color=color, marker=marker, markersize=3.5,
                            linewidth=1.4, linestyle="--" if oracle else dashes,
                            label=plain(head) + (" †" if oracle else ""))
            ax.fill_between(x, y - s, y + s, color=color, alpha=0.15, linewidth=0)
            handles.setdefault(head, ln)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(shots_all))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(shots_all, [str(s) for s in shots_all])
        if len(shots_all) == 1:
            ax.set_xlim(shots_all[0] / 1.5, shots_all[0] * 1.5)
        ax.set_title(plain(panel), fontsize=10, fontweight="bold" if panel == tables.AVERAGE else "normal")
        ax.grid(True, alpha=0.3, linewidth=0.5)
        ax.tick_params(labelsize=8)
    label_grid(axes, len(panels), ylabel=tables.METRIC_NAMES.get(metric, metric), xlabel="shots per class")
    if not handles:
        raise FeatbenchError("nothing to plot: no result row has a value for this metric")
    labels = [h.get_label() for h in handles.values()]
    fig.legend(list(handles.values()), labels, loc="outside lower center", fontsize=8, frameon=False,
               ncols=legend_columns(labels, width))
    note = "lines: mean over seeds; bands: ± population std"
    if any_oracle:
        note += "   † dashed: hyperparameters selected on the test set (oracle protocol)"
    fig.suptitle(fit_width((plain(title) + "\n" if title else "") + note, fig.get_figwidth(), 8), fontsize=8)

    return fig


def make_params_figure(df, *, metric: str = "acc", protocol: str | None = None, ncols: int = 4,
                       title: str | None = None, names: str = "registry", heads=None, datasets=None, shots=None):
    """Accuracy against trainable parameters (ELEVATER's parameter efficiency): one panel per shot count, one
    point per head (mean over seeds, ±std bar) on a log x axis; training-free heads (0 parameters) sit at a
    marked floor whose tick reads 0. Several datasets: the Average (mean accuracy, mean count), as the table's.
    Heads whose count is unknown (older rows, heads that do not report it) are left out and named in the title.
    """
    from featbench import tables

    prepared = _plot_rows(df, metric, protocol, names, heads=heads, shots=shots, datasets=datasets)
    found = tables.order_datasets(prepared["dataset_label"])
    panel_of = found[0] if len(found) == 1 else tables.AVERAGE
    cells = tables.cell_stats(prepared).merge(tables.param_cells(prepared), on=["head", "dataset", "shots"])
    cells = cells[(cells["dataset"] == panel_of) & cells["mean"].notna()]
    unknown = sorted(set(cells.loc[cells["low"].isna(), "head"]))
    cells = cells[cells["low"].notna()]
    if cells.empty:
        raise FeatbenchError("nothing to plot against parameters: no row records trainable_params (rows written by "
                             "featbench before it recorded them); refit, or plot --x shots")
    floor = params_floor(cells["low"])
    shots_all = sorted({int(s) for s in cells["shots"]})
    fig, axes, ncols = panel_grid(len(shots_all), ncols, panel_size=(3.4, 2.9))
    width = fig.get_figwidth()
    styles = _line_styles(prepared)
    handles: dict[str, object] = {}
    for k, shot in enumerate(shots_all):
        ax = axes[k // ncols][k % ncols]
        for head in tables.order_heads(prepared):
            cell = cells[(cells["head"] == head) & (cells["shots"] == shot)]
            if cell.empty:
                continue
            handles.setdefault(head, _params_point(ax, cell.iloc[0], floor, styles[head], head))
        _params_axis(ax, floor, float(cells["high"].max()))
        ax.set_title(f"{shot}-shot ({plain(panel_of)})", fontsize=10)
    label_grid(axes, len(shots_all), ylabel=tables.METRIC_NAMES.get(metric, metric),
               xlabel="trainable parameters (log)")
    labels = [h.get_label() for h in handles.values()]
    fig.legend(list(handles.values()), labels, loc="outside lower center", fontsize=8, frameon=False,
               ncols=legend_columns(labels, width))
    note = "points: mean over seeds, bars: ± population std; 0: training-free heads, drawn at the axis floor"
    if len(found) > 1:
        note += f"\n{tables.AVERAGE} over {len(found)} datasets (accuracy and parameter count)"
    if unknown:
        note += "\nnot drawn (trainable params unknown): " + ", ".join(plain(h) for h in unknown)
    absent = [h for h in tables.order_heads(prepared) if h not in handles and h not in unknown]
    if absent:
        note += f"\nnot drawn (no {plain(panel_of)} cell: not run on every dataset): " + ", ".join(map(plain, absent))
    fig.suptitle(fit_width((plain(title) + "\n" if title else "") + note, fig.get_figwidth(), 8), fontsize=8)
    return fig


def params_floor(counts) -> float:
    """Where 0 trainable parameters sit on the log axis: a decade below the smallest positive count (1 if none)."""
    positive = [float(c) for c in counts if c > 0]
    return 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else 1.0


def _params_point(ax, cell, floor: float, style: tuple, head: str):
    """One head's point (a horizontal segment where its runs' counts differ), with its ±std bar."""
    color, marker, dashes = style
    low, high = max(float(cell["low"]), floor), max(float(cell["high"]), floor)
    std = float(cell["std"]) if cell["std"] == cell["std"] else 0.0
    oracle = bool(cell["oracle"])
    if high > low:
        ax.plot([low, high], [cell["mean"]] * 2, color=color, linewidth=1.2, linestyle=dashes)
    ax.errorbar([low], [cell["mean"]], yerr=[std], color=color, linewidth=1.0, capsize=2)
    (pt,) = ax.plot([low], [cell["mean"]], color=color, marker=marker, markersize=6, linestyle="none",
                    markerfacecolor="none" if oracle else color, label=plain(head) + (" †" if oracle else ""))
    return pt


def _params_axis(ax, floor: float, top: float) -> None:
    """Log x axis from the floor to ``top``, a tick per decade, the floor's labelled 0 and marked by a dotted line."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    top = max(top, floor * 10)
    ax.set_xlim(floor / 2, top * 2)
    decades = range(round(math.log10(floor)) + 1, math.floor(math.log10(top)) + 1)
    ax.xaxis.set_major_locator(FixedLocator([floor] + [10.0 ** d for d in decades]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: "0" if v == floor else format_count(v).replace(".0", "")))
    ax.axvline(floor * 1.5, color="0.6", linewidth=0.6, linestyle=":")
    ax.grid(True, alpha=0.3, linewidth=0.5)
    ax.tick_params(labelsize=8)


def _plot_rows(df, metric, protocol, names, **picked):
    """The prepared, filtered "all" rows a figure draws (an error naming the fix when none are left)."""
    from featbench import tables

    prepared = tables.prepare(df, metric=metric, protocol=protocol, names=names)
    prepared = prepared[prepared["classes"] == "all"].reset_index(drop=True)  # base-to-new rows have no curve
    if prepared.empty:
        raise FeatbenchError("no accuracy-vs-shots rows: base-to-new rows are shown by `featbench table --base-to-new`")
    prepared = tables.filter_rows(prepared, **picked).reset_index(drop=True)
    if prepared.empty:
        raise FeatbenchError("nothing to plot after filtering by --heads/--datasets/--shots; check the names "
                             "against `featbench table`")
    return prepared


def label_grid(axes, n_panels: int, *, ylabel: str, xlabel: str) -> None:
    """Y label on the first column, x label under the last panel of each column, unused cells hidden."""
    nrows, ncols = len(axes), len(axes[0])
    for k in range(nrows * ncols):
        ax = axes[k // ncols][k % ncols]
        if k >= n_panels:
            ax.set_visible(False)
            continue
        if k % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=9)
        if k // ncols == nrows - 1 or k + ncols >= n_panels:
            ax.set_xlabel(xlabel, fontsize=9)


def fit_width(text: str, width_in: float, fontsize: float) -> str:
    """``text`` re-wrapped, line by line, to what fits ``width_in`` inches at ``fontsize`` (a narrow one-panel
    figure would otherwise cut its note at both edges)."""
    import textwrap

    per_line = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, per_line) for line in text.split("\n"))


def legend_columns(labels: list[str], width_in: float, fontsize: float = 8.0) -> int:
    """How many legend entries fit side by side in ``width_in`` inches (at most 5): marker + text + gap each."""
    char_in = 0.6 * fontsize / 72  # a generous average glyph width
    entry_in = 0.55 + char_in * max(len(str(lab)) for lab in labels)
    return max(1, min(len(labels), 5, int((width_in - 0.2) // entry_in)))


#: line styles that tell a head's variants (its runs with overrides) apart; "--" is kept for oracle curves
_VARIANT_DASHES = ("-", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))
_MARKERS = "osD^vP*Xh<>pd8H"


def head_style(head: str) -> tuple:
    """(colour, marker) of a head in every figure: fixed by its registry name (built-in heads in the
    registry's order, any other head by a hash of its name), never by which heads a figure happens to draw."""
    import zlib

    from matplotlib import colormaps

    known = list(DISPLAY_NAMES)
    slot = known.index(head) if head in known else len(known) + zlib.crc32(str(head).encode()) % 64
    tab20 = colormaps["tab20"]
    color = tab20((2 * slot) % 20 + (slot // 10) % 2)  # the 10 dark colours first, then the light ones
    return color, _MARKERS[slot % len(_MARKERS)]


def _line_styles(prepared) -> dict[str, tuple]:
    """label -> (colour, marker, line style): a head's colour and marker, its variants in other line styles."""
    styles: dict[str, tuple] = {}
    pairs = prepared[["head", "head_label"]].drop_duplicates().sort_values("head_label")
    for head, group in pairs.groupby("head", sort=False):
        color, marker = head_style(head)
        plain_names = (head, DISPLAY_NAMES.get(head))
        for k, label in enumerate(sorted(group["head_label"], key=lambda lab: (lab not in plain_names, lab))):
            styles[label] = (color, marker, _VARIANT_DASHES[k % len(_VARIANT_DASHES)])
    return styles


__all__ = ["plot_curves", "make_figure", "make_params_figure", "params_floor", "X_AXES", "head_style", "output_stem", "check_output", "plain", "legend_columns"]
