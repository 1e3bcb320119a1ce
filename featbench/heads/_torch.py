"""Torch helpers shared by the heads: device, local RNGs, normalisation, schedules, minibatches, view draws.

Heads compute in float32 and return numpy. Randomness always flows from a *local* ``torch.Generator`` seeded
with the head's ``random_state`` so fitting never reads or changes torch's global RNG state.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from featbench.devices import resolve_device  # noqa: F401  (the heads call it as T.resolve_device)
from featbench.errors import FeatbenchError


def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A local generator seeded with ``seed`` (0 when None): reproducible without touching global state."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed or 0))
    return g


def as_tensor(a, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """numpy / tensor -> float32 (or given dtype) tensor on device (a copy only when needed)."""
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


def as_labels(y, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.long, device=device)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise along ``dim`` (the eps only guards all-zero rows)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


def zeroshot_weights(text, device: torch.device | str = "cpu") -> torch.Tensor:
    """CLIP's prompt ensemble: t_c = norm(mean_T norm(text[T, C, D])) -> [C, D]."""
    t = as_tensor(text, device)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise FeatbenchError(f"text features must be [T, C, D] (got shape {tuple(t.shape)}); check the cache's /text group")
    return l2norm(l2norm(t).mean(dim=0))


def check_xy(X, y=None, n_classes: int | None = None, what: str = "X"):
    """Validate feature / label arrays early with one-line errors."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise FeatbenchError(f"{what} must be a 2-D feature array [N, D] (got shape {X.shape})")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise FeatbenchError(f"labels must have shape ({X.shape[0]},) to match {what} (got {y.shape})")
        if n_classes is not None and len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise FeatbenchError(f"labels must lie in [0, {n_classes}) (got {y.min()}..{y.max()})")
    return X, y


def minibatches(n: int, batch_size: int, gen: torch.Generator | None = None, shuffle: bool = True,
                drop_last: bool = False, device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Index batches over n rows: a fresh permutation from ``gen`` per call (one epoch), moved to ``device``
    once (one copy per epoch, not one per step; the same permutation whatever the device)."""
    idx = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    if device is not None:
        idx = idx.to(device)
    stop = (n // batch_size) * batch_size if drop_last else n
    for s in range(0, stop, batch_size):
        yield idx[s:s + batch_size]


class HostStaging:
    """Host buffers refilled every epoch and uploaded to the device with one asynchronous copy each.

    A ``non_blocking`` copy from pinned memory returns before the GPU has read the host buffer; refilling it
    then would let an epoch train on a mix of two epochs' data. ``fill()`` therefore waits for the event
    recorded after the previous upload. On the CPU the host buffers are the device buffers (no copy, no wait).
    ``copy`` and ``new_event`` exist for tests: a fake in-flight copy shows what the wait guards against.
    """

    def __init__(self, shapes_dtypes, device, *, copy=None, new_event=None):
        self.device = torch.device(device)
        on_cpu = self.device.type == "cpu"
        pin = self.device.type == "cuda"
        self.host = [torch.empty(shape, dtype=dt, pin_memory=pin) for shape, dt in shapes_dtypes]
        self.on_device = self.host if on_cpu and copy is None else [
            torch.empty(shape, dtype=dt, device=self.device) for shape, dt in shapes_dtypes]
        self._copy = copy or (lambda dst, src: dst.copy_(src, non_blocking=True))
        self._new_event = new_event or torch.cuda.Event
        self._in_flight = None

    def fill(self) -> list[torch.Tensor]:
        """The host buffers, safe to overwrite: the previous upload has finished reading them."""
        if self._in_flight is not None:
            self._in_flight.synchronize()
            self._in_flight = None
        return self.host

    def upload(self) -> list[torch.Tensor]:
        """Start copying the host buffers to the device; returns the device buffers (stream-ordered reads)."""
        if self.on_device is self.host:
            return self.host
        for dst, src in zip(self.on_device, self.host):
            self._copy(dst, src)
        self._in_flight = self._new_event()
        self._in_flight.record()
        return self.on_device


def accumulator_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for running sums kept on the device (what a Python float sum gives); MPS has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


class BestIterate:
    """The iterate with the best validation accuracy so far (ties: the later one).

    On a GPU the choice is made with ``torch.where``, so a training loop needs no host sync per step; on a
    CPU, where a sync costs nothing, a Python comparison copies only the better iterates (cheaper there).
    Both choose what ``if acc >= best`` chose (float32 accuracies compare the same either way).
    """

    def __init__(self, *tensors: torch.Tensor):
        device = tensors[0].device
        self.on_cpu = device.type == "cpu"
        self.acc = -1.0 if self.on_cpu else torch.full((), -1.0, device=device)
        self.step = -1 if self.on_cpu else torch.full((), -1, dtype=torch.long, device=device)
        self.tensors = [t.detach().clone() for t in tensors]

    def offer(self, acc: torch.Tensor, step: int, *tensors: torch.Tensor) -> None:
        if self.on_cpu:
            if float(acc) >= self.acc:
                self.acc, self.step = float(acc), step
                self.tensors = [t.detach().clone() for t in tensors]
            return
        better = acc >= self.acc
        self.acc = torch.where(better, acc, self.acc)
        self.step = torch.where(better, torch.full_like(self.step, step), self.step)
        for kept, t in zip(self.tensors, tensors):
            kept.copy_(torch.where(better, t.detach(), kept))

    def kept(self) -> tuple[list[torch.Tensor], int]:
        """The kept tensors and the (1-based) step they come from (on a GPU: one host sync, at the end)."""
        return self.tensors, int(self.step)


def draw_view_indices(n_views: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """One random cached-view index per image (the cached stand-in for a fresh augmentation per epoch)."""
    return torch.randint(0, n_views, (n,), generator=gen)


def gather_views(views: torch.Tensor, vidx: torch.Tensor) -> torch.Tensor:
    """views [V, N, D], vidx [N] -> [N, D] with row i taken from view vidx[i]."""
    return views[vidx, torch.arange(views.shape[1], device=views.device)]


def cosine_with_warmup(epoch: int, base_lr: float, max_epoch: int, warmup_epochs: int = 1,
                       warmup_lr: float = 1e-5) -> float:
    """Learning rate used *during* ``epoch`` (0-based) by Dassl's cosine schedule with constant warm-up.

    Dassl builds ``CosineAnnealingLR(T_max=max_epoch)`` and wraps it in ``ConstantWarmupScheduler`` (with
    WARMUP_RECOUNT=True, its default); the trainer steps the scheduler once at the end of every epoch. Tracing
    those objects: the wrapper's constructor sets lr = warmup_lr, so epochs 0..W-1 run at ``warmup_lr``. The
    first step at which the wrapper's counter has reached W hands over to the successor, whose own counter is
    still 0, so epoch W runs at ``base_lr`` (cosine at t=0); each later step advances the successor by one, so
    epoch e >= W runs at ``eta(e - W) = base_lr * (1 + cos(pi * (e - W) / max_epoch)) / 2`` (eta_min = 0). The
    warm-up epochs count inside ``max_epoch`` (training runs max_epoch epochs in all), so the cosine never
    reaches 0: the last epoch runs at eta(max_epoch - 1 - W).
    """
    if epoch < warmup_epochs:
        return float(warmup_lr)
    t = epoch - warmup_epochs
    return float(base_lr * (1.0 + math.cos(math.pi * t / max_epoch)) / 2.0)


def cosine_per_step(step: int, base_lr: float, total_steps: int) -> float:
    """torch CosineAnnealingLR(T_max=total_steps, eta_min=0) stepped once per iteration: lr for ``step``."""
    if total_steps <= 0:
        return float(base_lr)
    return float(base_lr * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0)


def make_optimizer(cls, params, **kw):
    """``cls(params, fused=True, **kw)`` where the fused kernel exists (one pass over the parameters instead of
    a dozen elementwise ops: 4-10x faster Adam steps on CPU for a 1000x1024 tensor), else the default one."""
    params = list(params)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def accuracy_count(logits: torch.Tensor, y: torch.Tensor) -> int:
    return int((logits.argmax(dim=-1) == y).sum())


def batched_logits(fn, X: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """Apply ``fn`` to row chunks of X (bounded memory for 50k-row test sets) and concatenate."""
    if X.shape[0] <= batch:
        return fn(X)
    return torch.cat([fn(X[s:s + batch]) for s in range(0, X.shape[0], batch)])


def cosine_decision(X, weights: torch.Tensor, scale: float) -> np.ndarray:
    """scale * norm(X) @ weights^T in row chunks: the decision function of every head that ends in a
    (pre-normalised) class-weight matrix (zero-shot, TaskRes, CoOp)."""
    X, _ = check_xy(X)
    f = as_tensor(X, weights.device)
    return to_numpy(batched_logits(lambda x: scale * l2norm(x) @ weights.T, f))


def class_sorted_order(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, int | None]:
    """A stable order that groups rows by class, and K when every class has exactly K rows (else None).

    With grouped, balanced rows, ``E @ onehot(y)`` equals ``E.view(n, C, K).sum(-1)``: the same sum at a
    C-th of the cost, which is what makes Tip-Adapter's cache logits cheap at 1000 classes.
    """
    y = np.asarray(y)
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y, minlength=n_classes)
    k = int(counts[0]) if len(counts) and np.all(counts == counts[0]) and counts[0] > 0 else None
    return order, k


def class_sum(E: torch.Tensor, values: torch.Tensor | None, n_classes: int, k: int | None) -> torch.Tensor:
    """Sum the last axis of E (columns = class-grouped cache rows) per class: E @ L with L one-hot."""
    if k is not None:
        return E.reshape(*E.shape[:-1], n_classes, k).sum(-1)
    return E @ values
