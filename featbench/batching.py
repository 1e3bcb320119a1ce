"""Batched multi-run fitting: the fits of several grid cells, or of one cell's search, trained as one problem.

A grid repeats the same small problem many times: three seeds of one (head, shots) cell, the points of a
``--grid`` sweep, the four TaskRes alphas of a ``val`` search. Each is a few hundred tiny optimiser steps,
so fitting them one at a time is dominated by per-step overhead. Heads that opt in (``Head.batch_key`` /
``Head.fit_batched``, see featbench.heads.base) are handed all runs with an equal key at once and train them
stacked (``[R, C, D]`` parameters, ``torch.bmm``, one optimiser step for all), each run with its own random
stream, so the fitted heads — hence the rows — equal one-at-a-time fits to float tolerance.

The fitting itself (``fit_all``: group by (head class, batch_key); ``drive``: run several cells'
``cell_steps`` generators through one ``fit_all``) lives in featbench.fitting, in the evaluation layer, so a
single cell uses the same path. This module decides which cells share a batch:
``cell_groups(cells)`` picks the cells the runner drives together: consecutive cells that differ only in
their seed. ``FEATBENCH_BATCH=0`` turns cross-cell batching off (each cell alone; a cell's own search is
still fitted through fit_all).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Iterable, Sequence

from featbench.devices import bounded_threads
from featbench.fitting import drive, fit_all  # noqa: F401  (fit_all re-exported: the unit of batching)
from featbench.protocol import cell_steps


def batching_enabled() -> bool:
    return os.environ.get("FEATBENCH_BATCH", "1").strip().lower() not in ("0", "false", "no", "off")


def run_cells(cells: Sequence) -> list[list[dict]]:
    """Rows of several cells fitted together (see cell_groups for which cells may share a batch)."""
    return drive([cell_steps(c) for c in cells])


def run_cells_bounded(cells: Sequence, threads: int | None) -> list[list[dict]]:
    """run_cells with torch/BLAS limited to ``threads`` (a parallel worker's share of the cores)."""
    with bounded_threads(threads):
        return run_cells(cells)


def _group_key(cell) -> str:
    """Everything that identifies a cell except its seed."""
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
    return sum(max(1, int(c.shots)) for c in group)


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
