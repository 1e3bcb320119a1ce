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
    select_cuda(dev)
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


# ----------------------------------------------------------------------------------------------------
# CUDA: one device per process, deterministic kernels, what a row records, out of memory
# ----------------------------------------------------------------------------------------------------
#: cuBLAS needs a fixed workspace for reproducible matmuls; it is read when the first cuBLAS handle is made
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def may_use_cuda(device) -> bool:
    """Whether work on ``device`` can run on a GPU (auto: when this machine has one); torch only for auto."""
    v = str(device or "auto").lower()
    if v.startswith("cuda"):
        return True
    if v != "auto":
        return False
    import torch  # lazy: only "auto" needs to ask

    return torch.cuda.is_available()


def use_deterministic(device, fast: bool = False, warn_only: bool = False) -> bool:
    """Deterministic kernels wherever CUDA may run (``fast``: leave torch's defaults); True when switched on.

    Call before CUDA starts in every process that fits or extracts (the parent, each joblib or Ray worker,
    each torchrun rank): cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, when its first handle is made. cuDNN gets
    fixed (non-benchmarked) deterministic convolution algorithms. ``warn_only``: a kernel without a
    deterministic version warns instead of failing (extraction: a forward pass must not stop over it).
    CPU work is left as it is.
    """
    if fast or not may_use_cuda(device):
        return False
    resolve_device(device)  # a GPU that is not there: one line, before any global setting changes
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    import torch  # lazy: the CLI's start-up path never needs torch

    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return True


def select_cuda(dev) -> None:
    """Make cuda:N this process's current device, so pinned memory, streams and events use GPU N."""
    import torch

    if dev.type == "cuda" and dev.index is not None and torch.cuda.current_device() != dev.index:
        torch.cuda.set_device(dev)


def free_device_memory(device) -> int | None:
    """Free bytes on the GPU ``device`` names (None for a CPU or MPS: nothing to plan around)."""
    if not may_use_cuda(device):
        return None
    dev = resolve_device(str(device).lower())
    if dev.type != "cuda":
        return None
    import torch

    return int(torch.cuda.mem_get_info(dev)[0])


def describe_device(device) -> str:
    """What a result row records as its fit device: "cpu", "mps" or "cuda <GPU name>" (no index)."""
    v = str(device or "auto").lower()
    if v in ("cpu", "mps"):
        return v
    dev = resolve_device(v)
    if dev.type != "cuda":
        return dev.type
    import torch

    return f"cuda {torch.cuda.get_device_name(dev)}"


def fit_device_fields(device) -> dict:
    """Row fields naming where a cell was fitted; ``"deterministic": False`` only for CUDA fits run --fast."""
    fields = {"fit_device": describe_device(device)}
    if fields["fit_device"].startswith("cuda"):
        import torch

        if not torch.are_deterministic_algorithms_enabled():
            fields["deterministic"] = False
    return fields


def plan_gpu_workers(jobs: int, device, n_gpus: int) -> list[str]:
    """The device of each parallel worker: one worker per visible GPU at most, never two CUDA contexts on one.

    CPU work keeps ``jobs`` workers on the device given. ``cuda`` (or ``auto`` with GPUs) spreads over cuda:0..;
    ``cuda:N`` names one GPU, hence one worker.
    """
    jobs = max(1, int(jobs))
    v = str(device or "auto").lower()
    if v.startswith("cuda:"):
        return [v]
    if v == "cuda" or (v == "auto" and n_gpus > 0):
        if n_gpus < 1:
            raise FeatbenchError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        return [f"cuda:{i}" for i in range(min(jobs, int(n_gpus)))]
    return [v] * jobs


def ray_resources(device, cluster_gpus: float = 0.0) -> dict:
    """What each Ray task asks for: one CPU, and one GPU when the fit runs on CUDA (auto: when the cluster has one)."""
    v = str(device or "auto").lower()
    wants_gpu = v.startswith("cuda") or (v == "auto" and cluster_gpus > 0)
    return {"num_cpus": 1, "num_gpus": 1} if wants_gpu else {"num_cpus": 1}


OUT_OF_MEMORY_FIX = "lower --batch-size, run fewer --jobs, or use --device cpu"


def out_of_memory_message(err: BaseException) -> str | None:
    """One line for an out-of-memory error (also inside a Ray task error), or None for any other error."""
    for seen in _causes(err):
        first = str(seen).strip().split("\n", 1)[0]
        if type(seen).__name__ == "OutOfMemoryError" or "CUDA out of memory" in first:
            return f"out of GPU memory ({'. '.join(first.split('. ')[:2])[:160]}); {OUT_OF_MEMORY_FIX}"
    return None


def _causes(err: BaseException):
    """The error and what it wraps (a worker's or Ray task's cause), a few levels deep."""
    seen = err
    for _ in range(4):
        if seen is None:
            return
        yield seen
        seen = getattr(seen, "cause", None) or seen.__cause__


def nondeterministic_message(err: BaseException) -> str | None:
    """One line for a kernel that deterministic mode refuses, naming --fast; None for any other error."""
    for seen in _causes(err):
        text = str(seen).strip().split("\n", 1)[0]
        if "does not have a deterministic implementation" in text:
            return f"{text.split(', but', 1)[0][:200]}; rerun with `fit --fast` to allow nondeterministic kernels"
    return None


def device_error_message(err: BaseException) -> str | None:
    """The one-line message for an error of the device (out of memory, a nondeterministic kernel), or None."""
    return out_of_memory_message(err) or nondeterministic_message(err)


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
