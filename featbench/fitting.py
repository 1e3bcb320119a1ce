"""Fitting the heads that cells ask for, stacked where a head can train several runs as one problem.

``fit_all(fits)`` groups a list of (head, X, y, context) by (head class, ``Head.batch_key``) and fits each
group with one ``fit_batched`` call (a group of one with plain ``fit``). ``drive(steps)`` runs the
``featbench.protocol.cell_steps`` generators of several cells together: it collects every cell's FitRequest,
fits them all through ``fit_all`` and sends each cell its fitted heads back. One cell alone
(``featbench.protocol.run_cell``) goes the same way, so its own search points still share a batch.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from featbench.devices import free_device_memory

#: a stacked run holds about this many times its inputs' bytes on the device (the features, each epoch's
#: gathered and normalised copy, activations and optimiser state)
DEVICE_BYTES_PER_INPUT_BYTE = 4
#: the share of the device's free memory one stack may plan to use
DEVICE_MEMORY_SHARE = 0.5


def _key(head, X, y, context) -> Any:
    key = head.batch_key(X, y, context)
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
        for chunk in stack_chunks(idx, fits):
            fitted = type(fits[chunk[0]][0]).fit_batched([fits[i] for i in chunk])
            for i, head in zip(chunk, fitted):
                out[i] = head
    return out


def input_bytes(X, context) -> int:
    """Bytes of one run's arrays (features, views, text, validation rows)."""
    arrays = [X, *context.values()]
    return int(sum(getattr(a, "nbytes", 0) for a in arrays if not isinstance(a, (str, bytes))))


def runs_per_stack(run_bytes: int, free_bytes: int | None, share: float = DEVICE_MEMORY_SHARE) -> int | None:
    """How many runs one stack may hold: ``share`` of the free device memory over a run's estimated bytes
    (None: no cap, as on the CPU, where a stack lives in ordinary memory)."""
    if free_bytes is None:
        return None
    return max(1, int(free_bytes * share) // max(1, int(run_bytes) * DEVICE_BYTES_PER_INPUT_BYTE))


def stack_chunks(idx: list[int], fits: Sequence[tuple]) -> list[list[int]]:
    """The runs of one batch group split into stacks that fit in device memory (one stack on a CPU)."""
    head, X, _y, context = fits[idx[0]]
    cap = runs_per_stack(input_bytes(X, context), free_device_memory(getattr(head, "device", "cpu")))
    if cap is None or cap >= len(idx):
        return [idx]
    return [idx[s:s + cap] for s in range(0, len(idx), cap)]


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
