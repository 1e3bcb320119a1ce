"""Execution back ends of a fit grid: this process, joblib (loky) workers, or Ray tasks.

Each back end takes the cells of a plan lazily and yields each cell's rows in cell order, so the runner
appends rows as they come and a killed run resumes where it stopped. Parallel workers bound their BLAS/torch
threads to their share of the cores, exit when the process that started them dies (a watchdog), and, on
CUDA, each holds one GPU with deterministic kernels unless ``--fast``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Iterator, Mapping, Sequence

from featbench.batching import group_cost, iter_groups, largest_first, run_cells, run_cells_bounded
from featbench.devices import ray_resources, use_deterministic
from featbench.errors import FeatbenchError
from featbench.protocol import close_cached, run_cell_bounded


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def run_serial(cells) -> Iterator[list[dict]]:
    try:
        for group in iter_groups(cells):  # cells that differ only by seed train as one batched problem
            yield from run_cells(group)
    finally:
        close_cached()


def run_joblib(cells, jobs: int, fast: bool = False, gpus: Sequence[str] = ()) -> Iterator[list[dict]]:
    """Groups of cells on ``jobs`` loky workers; with ``gpus``, each group runs on a GPU no other worker holds."""
    if not gpus:
        yield from _joblib_groups(cells, jobs, fast, None)
        return
    from multiprocessing import Manager

    with Manager() as manager:
        free_gpus = manager.Queue()
        for device in gpus:
            free_gpus.put(device)
        yield from _joblib_groups(cells, len(gpus), fast, free_gpus)


def _joblib_groups(cells, jobs: int, fast: bool, free_gpus) -> Iterator[list[dict]]:
    from joblib import Parallel, delayed

    threads = max(1, _cores() // jobs)
    parallel = Parallel(n_jobs=jobs, backend="loky", return_as="generator", inner_max_num_threads=threads,
                        batch_size=1)
    parent = os.getpid()
    # cells that differ only by seed train as one batched problem; the costliest groups are dispatched first
    # (within windows) and their rows handed back in plan order, as the serial back end gives them
    order = largest_first(enumerate(iter_groups(cells)), key=lambda item: group_cost(item[1]))
    pending: dict[int, list] = {}
    nxt = 0
    indices: list[int] = []

    def tasks():
        for i, g in order:
            indices.append(i)
            yield delayed(run_cells_watched)(g, threads, parent, fast, free_gpus)

    for k, rows in enumerate(parallel(tasks())):
        pending[indices[k]] = rows
        while nxt in pending:
            yield from pending.pop(nxt)
            nxt += 1


_WATCHDOG_STARTED = False


def run_cell_watched(cell, threads: int | None, parent_pid: int) -> list[dict]:
    """run_cell_bounded in a worker that exits as soon as the process that started it dies.

    loky keeps idle workers for minutes and a busy one computes to the end: after a `kill -9` of `fit
    --jobs N`, N workers of several hundred MB each lingered ~6 minutes. A daemon thread polls the parent
    pid (twice a second) and ends the worker when it is gone.
    """
    global _WATCHDOG_STARTED
    if not _WATCHDOG_STARTED and os.getpid() != parent_pid:
        _WATCHDOG_STARTED = True
        start_parent_watchdog(parent_pid)
    return run_cell_bounded(cell, threads)


def run_cells_watched(cells, threads: int | None, parent_pid: int, fast: bool = False,
                      free_gpus=None) -> list[list[dict]]:
    """run_cell_watched for a group of cells fitted together (featbench.batching), deterministic on CUDA
    unless ``fast``; with ``free_gpus`` (a queue of device names) on a GPU no other worker holds."""
    global _WATCHDOG_STARTED
    if not _WATCHDOG_STARTED and os.getpid() != parent_pid:
        _WATCHDOG_STARTED = True
        start_parent_watchdog(parent_pid)
    use_deterministic(cells[0].device, fast)
    if free_gpus is None:
        return run_cells_bounded(cells, threads)
    return run_cells_on_free_gpu(cells, threads, free_gpus)


def run_cells_on_free_gpu(cells, threads: int | None, free_gpus) -> list[list[dict]]:
    """Take a GPU from the queue, fit the cells there, hand it back: one worker per GPU at any time."""
    device = free_gpus.get()
    try:
        return run_cells_bounded([replace(c, device=device) for c in cells], threads)
    finally:
        free_gpus.put(device)


def run_cell_on_ray(cell, threads: int | None, fast: bool = False) -> list[dict]:
    """One cell in a Ray task, deterministic on CUDA unless ``fast``."""
    use_deterministic(cell.device, fast)
    return run_cell_bounded(cell, threads)


def ray_cell(cell, resources: Mapping):
    """The cell as a Ray task sees it: a task given a GPU sees only that GPU, as cuda (cuda:N would not exist)."""
    return replace(cell, device="cuda") if resources.get("num_gpus") else cell


def start_parent_watchdog(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this process (os._exit, no cleanup: the parent is gone) once `parent_pid` is no longer its parent."""
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="featbench-parent-watchdog", daemon=True).start()


def run_ray(cells, address: str, device: str = "cpu", fast: bool = False) -> Iterator[list[dict]]:
    try:
        import ray
    except ImportError:
        raise FeatbenchError('--ray needs the optional Ray dependency: pip install "featbench[ray]"') from None
    started = False
    if not ray.is_initialized():
        try:
            if address in ("local", "", None):
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as err:
            raise FeatbenchError(f"--ray {address}: could not connect to a Ray cluster ({err})") from None
        started = True
    try:
        resources = ray_resources(device, float(ray.cluster_resources().get("GPU", 0)))
        remote = ray.remote(**resources)(run_cell_on_ray)
        refs = [remote.remote(ray_cell(cell, resources), 1, fast) for cell in cells]
        for ref in refs:
            try:
                yield ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, FeatbenchError):
                    raise FeatbenchError(str(cause)) from None
                raise
    finally:
        if started:
            ray.shutdown()


__all__ = ["run_serial", "run_joblib", "run_ray", "start_parent_watchdog", "run_cell_watched", "run_cells_watched"]
