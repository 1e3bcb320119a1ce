"""Batched multi-run fitting: the fits of several grid cells, or of one cell's search, trained as one problem.

A grid repeats the same small problem many times: three seeds of one (head, shots) cell, the points of a
``--grid`` sweep, the four TaskRes alphas of a ``val`` search. Each is a few hundred tiny optimiser steps,
so fitting them one at a time is dominated by per-step overhead. Heads that opt in (``Head.batch_key`` /
``Head.fit_batched``, see featbench.heads.base) are handed all runs with an equal key at once and train them
stacked (``[R, C, D]`` parameters, ``torch.bmm``, one optimiser step for all), each run with its own random
stream, so the fitted heads — hence the rows — equal one-at-a-time fits to float tolerance.

Two levels:
- ``fit_all(fits)`` groups a list of (head, X, y, context) by (head class, batch_key) and fits each group;
- ``drive(steps)`` runs the ``featbench.protocol.cell_steps`` generators of several cells together: it collects
  every cell's FitRequest, fits them all through ``fit_all`` and sends each cell its heads back.
``cell_groups(cells)`` picks the cells the runner drives together: consecutive cells that differ only in
their seed. ``FEATBENCH_BATCH=0`` turns cross-cell batching off (each cell alone; a cell's own search is
still fitted through fit_all).
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Sequence


def batching_enabled() -> bool:
    return os.environ.get("FEATBENCH_BATCH", "1").strip().lower() not in ("0", "false", "no", "off")


def _key(head, X, y, context) -> Any:
    try:
        key = head.batch_key(X, y, context)
    except AttributeError:  # a plugin head that does not derive from Head
        return None
    return None if key is None else (type(head), key)


def fit_all(fits: Sequence[tuple]) -> list:
    """Fit every (head, X, y, context); runs with an equal (class, batch_key) share one ``fit_batched`` call."""
    groups: dict[Any, list[int]] = {}
    order: list[Any] = []
    for i, (head, X, y, context) in enumerate(fits):
        key = _key(head, X, y, context)
        if key is None:
            key = ("alone", i)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)
    out: list = [None] * len(fits)
    for key in order:
        idx = groups[key]
        if len(idx) == 1:
            head, X, y, context = fits[idx[0]]
            out[idx[0]] = head.fit(X, y, **context)
            continue
        fitted = type(fits[idx[0]][0]).fit_batched([fits[i] for i in idx])
        for i, head in zip(idx, fitted):
            out[i] = head
    return out


def drive(steps: Sequence) -> list[list[dict]]:
    """Run cell_steps generators together; returns each cell's rows (in the given order).

    The fit time of the shared batch is split between the cells in proportion to their number of fits.
    """
    requests = [next(g) for g in steps]
    fits = [(h, r.X, r.y, r.context) for r in requests for h in r.heads]
    t0 = time.perf_counter()
    fitted = fit_all(fits)
    share = (time.perf_counter() - t0) / max(len(fits), 1)
    rows, at = [], 0
    for g, r in zip(steps, requests):
        heads = fitted[at:at + len(r.heads)]
        at += len(r.heads)
        try:
            g.send((heads, share * len(heads)))
        except StopIteration as stop:
            rows.append(stop.value)
        else:  # pragma: no cover - a cell_steps generator yields once
            raise RuntimeError("cell_steps yielded more than one fit request")
    return rows


def run_cells(cells: Sequence) -> list[list[dict]]:
    """Rows of several cells fitted together (see cell_groups for which cells may share a batch)."""
    from featbench.protocol import cell_steps

    return drive([cell_steps(c) for c in cells])


def run_cells_bounded(cells: Sequence, threads: int | None) -> list[list[dict]]:
    """run_cells with torch/BLAS limited to ``threads`` (a parallel worker's share of the cores)."""
    from featbench.protocol import bounded_threads

    with bounded_threads(threads):
        return run_cells(cells)


def _group_key(cell) -> str:
    """Everything that identifies a cell except its seed."""
    from dataclasses import asdict

    d = asdict(cell)
    d.pop("seed", None)
    return repr(sorted(d.items()))


def iter_groups(cells: Iterable, max_size: int = 16):
    """Lazily group consecutive cells that differ only in their seed (lists of at most max_size cells)."""
    group: list = []
    last = None
    enabled = batching_enabled()
    for c in cells:
        k = _group_key(c) if enabled else object()
        if group and k == last and len(group) < max_size:
            group.append(c)
            continue
        if group:
            yield group
        group, last = [c], k
    if group:
        yield group


def group_cost(group: Sequence) -> int:
    """A rough cost of a group of cells for scheduling: its cells times their shots (train rows scale with both)."""
    return sum(max(1, int(getattr(c, "shots", 1) or 1)) for c in group)


def largest_first(items: Iterable, key=group_cost, window: int = 64):
    """Items (groups of cells) reordered costliest first within windows of ``window`` (lazy, a window at a time).

    Why: parallel workers fed in plan order finish on the 16-shot groups, which come last, while the other
    workers idle; longest-first keeps them busy to the end. Windows keep huge grids streaming and bound
    what a caller must buffer to hand rows back in plan order.
    """
    buf: list = []
    for item in items:
        buf.append(item)
        if len(buf) == window:
            yield from sorted(buf, key=key, reverse=True)
            buf = []
    yield from sorted(buf, key=key, reverse=True)


def cell_groups(cells: Sequence, max_size: int = 16) -> list[list[int]]:
    """Indices of consecutive cells that differ only in their seed (at most max_size per group)."""
    out, at = [], 0
    for g in iter_groups(cells, max_size):
        out.append(list(range(at, at + len(g))))
        at += len(g)
    return out


def iter_group_rows(cells: Sequence, results: Iterable[list[list[dict]]]):
    """Flatten per-group results back to per-cell rows, in cell order."""
    for group_rows in results:
        yield from group_rows


__all__ = ["fit_all", "drive", "run_cells", "run_cells_bounded", "cell_groups", "iter_groups", "largest_first",
           "group_cost", "batching_enabled"]
