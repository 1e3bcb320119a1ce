"""Device names: the spellings every flag and recipe accepts, and their torch.device (torch imported lazily)."""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager

from featbench.errors import FeatbenchError

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def check_device(value: str, flag: str = "--device") -> str:
    """auto | cpu | mps | cuda | cuda:N, lower-cased; one error line for anything else."""
    v = str(value).strip().lower()
    if not re.fullmatch(DEVICE_PATTERN, v):
        raise FeatbenchError(f"{flag} {value}: expected auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return v


def resolve_device(device):
    """'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available) -> torch.device, with a clear error."""
    import torch  # lazy: the CLI's start-up path never needs torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FeatbenchError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


@contextmanager
def bounded_threads(threads: int | None):
    """Limit torch and BLAS to `threads` inside the block (no limit when threads is falsy)."""
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits  # lazy: only parallel workers bound their threads

    if "torch" in sys.modules:  # otherwise torch reads OMP_NUM_THREADS (set by loky/Ray) when a head imports it
        sys.modules["torch"].set_num_threads(int(threads))
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(int(threads))
    with threadpool_limits(limits=int(threads)):
        yield
