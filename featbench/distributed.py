"""Distributed extraction with torchrun: disjoint shards, one part file per rank, rank 0 merges.

``torchrun --nproc-per-node N -m featbench extract ...`` (multi-node: the usual ``--nnodes/--node-rank/
--rdzv-endpoint`` flags, with --out/--cache-dir on a filesystem every node sees) starts N copies of the CLI.
torchrun tells each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Each rank then

1. encodes a disjoint, non-padded shard of the rows a single process would encode (`shard_rows`; unlike
   ``DistributedSampler`` nothing is padded or duplicated, so no row is encoded twice),
2. writes it to its own part ``<cache>.part-<rank>-of-<world>.h5`` with the same resumable, atomic writer as a
   single-process run — a rank that died and is restarted (torchrun ``--max-restarts``, or the same command
   again) continues its own part where it stopped,
3. waits at a barrier; rank 0 merges the parts into the final cache (`featbench.merge.merge_parts`) and
   deletes them; a second barrier lets every rank return only once the cache exists.

A rank that fails does not wait for the others: it leaves a marker beside the output
(``<cache>.failed-rank-<r>``, on the filesystem every rank shares) and exits at once. Every other rank watches
for markers (`FailureWatch`, twice a second) and stops within a second, keeping its part, instead of
encoding on (or waiting in a barrier) until the slowest rank ends while holding its GPU.

``--overwrite`` rebuilds the parts too (each rank discards its own partial), so leave it out of a command that
torchrun may restart (``--max-restarts``) if finished work should be kept.

The process group (gloo on CPU, nccl on CUDA) is only created when WORLD_SIZE > 1; it is used for the
barriers alone, so a long extraction never holds a collective open. Each rank uses cuda:LOCAL_RANK on GPU.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from featbench.errors import FeatbenchError
from featbench.merge import merge_parts, part_path

#: how long a rank waits at a barrier for the slowest rank (extraction of a big shard can take hours);
#: override with FEATBENCH_DIST_TIMEOUT (seconds)
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun job (rank 0 of world 1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    master_addr: str | None = None
    master_port: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(env, key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise FeatbenchError(f"environment variable {key}={raw!r} is not an integer; launch with torchrun or unset it") from None


def dist_env(environ=None) -> DistEnv:
    """Read torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    env = os.environ if environ is None else environ
    world = _int_env(env, "WORLD_SIZE", 1)
    rank = _int_env(env, "RANK", 0)
    local_rank = _int_env(env, "LOCAL_RANK", rank if world > 1 else 0)
    local_world = _int_env(env, "LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise FeatbenchError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent; launch with torchrun")
    out = DistEnv(rank=rank, world=world, local_rank=local_rank, local_world=local_world,
                  master_addr=env.get("MASTER_ADDR"), master_port=env.get("MASTER_PORT"))
    if out.distributed and not (out.master_addr and out.master_port):
        raise FeatbenchError("WORLD_SIZE>1 but MASTER_ADDR/MASTER_PORT are not set; launch with torchrun (it sets them)")
    return out


def shard_bounds(n: int, rank: int, world: int, align: int = 1) -> tuple[int, int]:
    """[start, stop) of rank's contiguous block of n items, whole `align`-sized groups per rank.

    Blocks differ by at most one group, cover 0..n exactly once and depend only on (n, rank, world, align).
    With align = the batch size each rank's batches are exactly the batches a single process forms, so the
    encoder sees the same batch shapes and the features match a single-process run bit for bit.
    """
    if world < 1 or not 0 <= rank < world:
        raise FeatbenchError(f"shard {rank} of {world} is not a valid shard (need 0 <= rank < world)")
    align = max(1, int(align))
    groups = -(-int(n) // align)
    base, extra = divmod(groups, world)
    g0 = rank * base + min(rank, extra)
    g1 = g0 + base + (1 if rank < extra else 0)
    return min(g0 * align, n), min(g1 * align, n)


def shard_rows(rows: Sequence[int] | np.ndarray, rank: int, world: int, align: int = 1) -> np.ndarray:
    """The rows (in the given canonical order) that rank encodes: a contiguous, disjoint, non-padded block."""
    rows = np.asarray(rows, dtype=np.int64)
    start, stop = shard_bounds(rows.size, rank, world, align)
    return rows[start:stop]


def rank_device(device: str, local_rank: int) -> str:
    """'auto'/'cuda' -> cuda:LOCAL_RANK where CUDA is available (and selected as current device); else as given."""
    want = str(device)
    if want == "cpu":
        return "cpu"
    import torch

    if want in ("auto", "cuda") or want.startswith("cuda"):
        if not torch.cuda.is_available():
            if want == "auto":
                return "cpu"
            raise FeatbenchError(f"--device {want} but CUDA is not available on this node; use --device cpu")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise FeatbenchError(f"LOCAL_RANK={local_rank} but this node has {n} GPU(s); use --nproc-per-node {n}")
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return want


def backend_for(device: str) -> str:
    return "nccl" if str(device).startswith("cuda") else "gloo"


def _timeout() -> _dt.timedelta:
    raw = os.environ.get("FEATBENCH_DIST_TIMEOUT")
    try:
        return _dt.timedelta(seconds=float(raw)) if raw else _dt.timedelta(seconds=DEFAULT_TIMEOUT_S)
    except ValueError:
        raise FeatbenchError(f"FEATBENCH_DIST_TIMEOUT={raw!r} is not a number of seconds") from None


class ProcessGroup:
    """Context manager: init the default process group when world > 1 (env:// rendezvous), destroy on exit."""

    def __init__(self, env: DistEnv, device: str = "cpu"):
        self.env = env
        self.backend = backend_for(device)
        self.device = device
        self._owned = False

    def __enter__(self) -> "ProcessGroup":
        if not self.env.distributed:
            return self
        import torch.distributed as dist

        if not dist.is_available():
            raise FeatbenchError("this torch build has no torch.distributed; install a standard torch wheel")
        if not dist.is_initialized():
            kw = {}
            if self.backend == "nccl":
                import torch

                kw["device_id"] = torch.device(self.device)
            dist.init_process_group(backend=self.backend, init_method="env://", rank=self.env.rank,
                                    world_size=self.env.world, timeout=_timeout(), **kw)
            self._owned = True
        return self

    def barrier(self) -> None:
        if not self.env.distributed:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True on every rank iff ok on every rank (so one failing rank stops all, instead of a hung barrier)."""
        if not self.env.distributed:
            return ok
        import torch
        import torch.distributed as dist

        t = torch.tensor([0 if ok else 1], dtype=torch.int64,
                         device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return int(t.item()) == 0

    def __exit__(self, *exc) -> None:
        if self._owned:
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover - best effort at shutdown
                pass


def run_sharded(
    extract_fn: Callable[..., Path],
    out: str | os.PathLike,
    *,
    device: str = "auto",
    overwrite: bool = False,
    env: DistEnv | None = None,
    **kwargs,
) -> Path:
    """Run `extract_fn(out=<part>, shard=(rank, world), device=<rank device>, overwrite=..., **kwargs)` on every
    rank, then barrier, rank-0 merge into `out`, removal of the parts, barrier. Returns `out` on every rank.

    Outside torchrun (world 1) this is just `extract_fn(out=out, ...)`.
    """
    env = env or dist_env()
    out = Path(out)
    if not env.distributed:
        return Path(extract_fn(out=out, device=device, overwrite=overwrite, **kwargs))
    rank_dev = rank_device(device, env.local_rank)
    if "progress" in kwargs and not env.is_main:
        kwargs["progress"] = False  # one progress bar (rank 0's), not one per rank
    with ProcessGroup(env, rank_dev) as pg:
        failure_marker(out, env.rank).unlink(missing_ok=True)  # a marker left by an earlier run
        pg.barrier()  # every rank's old marker is gone before anyone watches
        with FailureWatch(out, env.rank):
            return _sharded_steps(extract_fn, out, pg, env, rank_dev, overwrite, kwargs)


def _sharded_steps(extract_fn, out: Path, pg: ProcessGroup, env: DistEnv, rank_dev: str, overwrite: bool,
                   kwargs: dict) -> Path:
    """Encode this rank's shard, agree, rank 0 merges, agree (see run_sharded)."""
    if out.exists() and not overwrite:
        # the final cache is already there: nothing to shard; rank 0 applies extract's own rules to it
        # (up to date, or refused with its message) while the other ranks wait
        error = _attempt(lambda: extract_fn(out=out, device=rank_dev, overwrite=False, **kwargs)) if env.is_main else None
        _agree(pg, error, f"rank 0 could not use the existing cache {out}; see its message", out, env.rank)
        return out
    part = part_path(out, env.rank, env.world)
    error = _attempt(lambda: extract_fn(out=part, shard=(env.rank, env.world), device=rank_dev, overwrite=overwrite,
                                        **kwargs))
    _agree(pg, error, f"another rank failed during distributed extraction; rank {env.rank}'s part {part} is "
                      "kept; run the same torchrun command again to resume", out, env.rank)
    error = _attempt(lambda: _merge_and_remove_parts(out, env.world)) if env.is_main else None
    _agree(pg, error, f"rank 0 failed to merge the parts into {out}; the parts are kept "
                      f"(merge by hand: featbench merge {out}.part-*-of-{env.world}.h5 --out {out})", out, env.rank)
    return out


def failure_marker(out: Path, rank: int) -> Path:
    """Where rank ``rank`` records that it failed (beside the output: every rank sees it)."""
    return out.with_name(f"{out.name}.failed-rank-{rank}")


class FailureWatch:
    """A thread that ends this rank (exit code 2) soon after another rank has left a failure marker.

    ``stop(rank, message)`` is what ends the rank; tests pass their own.
    """

    def __init__(self, out: Path, rank: int, interval: float = 0.5, stop: Callable[[int, str], None] | None = None):
        self.out, self.rank, self.interval = Path(out), int(rank), float(interval)
        self._stop = stop or _stop_rank
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="featbench-rank-watch", daemon=True)

    def __enter__(self) -> "FailureWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def failed(self) -> tuple[int, str] | None:
        """(rank, its message) of another rank that failed, or None."""
        for marker in sorted(self.out.parent.glob(f"{self.out.name}.failed-rank-*")):
            rank = int(marker.name.rsplit("-", 1)[1])
            if rank != self.rank:
                try:
                    return rank, marker.read_text(encoding="utf-8").strip()
                except OSError:  # removed meanwhile
                    continue
        return None

    def _watch(self) -> None:
        while not self._done.wait(self.interval):
            found = self.failed()
            if found is not None:
                self._stop(*found)
                return


def _stop_rank(rank: int, message: str) -> None:
    print(f"featbench: error: rank {rank} failed ({message}); this rank stops and keeps its part; run the same "
          "torchrun command again to resume", file=sys.stderr, flush=True)
    os._exit(2)


def _mark_failed(out: Path, rank: int, error: BaseException) -> None:
    """Leave the marker the other ranks watch for (best effort: the error is raised either way)."""
    text = " ".join(str(error).split())[:300] or type(error).__name__
    try:
        failure_marker(out, rank).write_text(text, encoding="utf-8")
    except OSError:
        pass


def _attempt(step: Callable[[], object]) -> BaseException | None:
    """Run one rank's step and keep its error, to report after the collective (so other ranks do not hang)."""
    try:
        step()
    except BaseException as err:
        return err
    return None


def _agree(pg: ProcessGroup, error: BaseException | None, elsewhere: str, out: Path, rank: int) -> None:
    """Every rank stops when any rank failed: with its own error, or `elsewhere` on the ranks that did not fail.

    A failed rank marks its failure and raises at once, without joining the collective: the others'
    FailureWatch ends them, whether they are still encoding or already waiting here.
    """
    if error is not None:
        _mark_failed(out, rank, error)
        raise error
    if not pg.all_ok(True):
        raise FeatbenchError(elsewhere)


def _merge_and_remove_parts(out: Path, world: int) -> None:
    """Rank 0: merge every rank's part into `out`, then delete the parts."""
    parts = [part_path(out, r, world) for r in range(world)]
    missing = [p for p in parts if not p.exists()]
    if missing:
        raise FeatbenchError(f"rank 0 cannot see the part {missing[0]} written by another rank; with several nodes "
                             "--out/--cache-dir must be on a filesystem every node shares")
    merge_parts(parts, out, overwrite=True)
    for p in parts:
        p.unlink(missing_ok=True)


__all__ = ["DistEnv", "dist_env", "shard_rows", "shard_bounds", "rank_device", "backend_for", "ProcessGroup",
           "run_sharded", "part_path", "FailureWatch", "failure_marker"]
