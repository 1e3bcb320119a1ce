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


TORCH_PAIR_FIX = ("install torch and torchvision as a matching pair from one index, e.g. `pip install --force-reinstall "
                  "torch torchvision --index-url https://download.pytorch.org/whl/cpu` (or both from the CUDA index)")


def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist``, read from its metadata (nothing is imported)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def check_torch_install() -> None:
    """Import torch (and torchvision where installed) once, so a mismatched pair, such as a CPU torch next to
    a CUDA torchvision ("operator torchvision::nms does not exist"), is one line at a command's start instead
    of a traceback from deep inside open_clip."""
    import importlib.util

    try:
        import torch  # noqa: F401

        if importlib.util.find_spec("torchvision") is not None:
            import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise FeatbenchError(f"torch {installed_version('torch')} and torchvision {installed_version('torchvision')} "
                             f"do not load together ({first}); {TORCH_PAIR_FIX}") from None
