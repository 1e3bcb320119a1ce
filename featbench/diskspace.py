"""A full disk (or an exhausted quota) as one error line that names the folder and the space still needed.

Writers meet a full disk in several disguises: ``OSError(ENOSPC)`` or ``OSError(EDQUOT)`` from Python's own
file calls, and h5py's wrapped HDF5 errors (an ``OSError`` or ``RuntimeError`` whose text carries
"errno = 28" or "No space left on device"). `is_disk_full` recognises them all; `disk_full_as_error` turns
one into a `DiskFull` (a `FeatbenchError`, so the CLI prints one line and exits with code 2), and
`check_free_space` refuses a big write before it starts when ``shutil.disk_usage`` says it cannot fit.
Each writer keeps its own files consistent on the way out (rolls back or removes what it half wrote).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from featbench.errors import FeatbenchError

#: the errno values of "no space left": a full device (ENOSPC) and an exhausted quota (EDQUOT)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_TEXT = re.compile(
    r"no space left on device|disk quota exceeded|\berrno\s*=?\s*(%d|%d)\b|\[errno (%d|%d)\]"
    % (errno.ENOSPC, errno.EDQUOT, errno.ENOSPC, errno.EDQUOT),
    re.IGNORECASE,
)


class DiskFull(FeatbenchError):
    """A write ran out of disk space (or quota); what was written so far is kept consistent."""


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it was raised from or while handling) says the disk or quota is full."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(err, (OSError, RuntimeError)) and _TEXT.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes for an unprivileged writer on the filesystem of ``folder`` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return None


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB': a size for an error line."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def disk_full_error(folder: str | os.PathLike, needed: int | None, what: str, then: str = "") -> DiskFull:
    """The one line for a full disk in ``folder`` while writing ``what``, with ``needed`` bytes still to write."""
    free = free_bytes(folder)
    need = f"about {human_bytes(needed)} still to write" if needed else "more space needed"
    have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    tail = f"; {then}" if then else ""
    return DiskFull(f"no space left in {folder} (disk or quota full) while writing {what}: {need}, {have}; "
                    f"free space there or write to another folder{tail}")


def check_free_space(folder: str | os.PathLike, needed: int, what: str, then: str = "") -> None:
    """Refuse, before it starts, a write of ``needed`` bytes into ``folder`` that the free space cannot hold."""
    free = free_bytes(folder)
    if free is not None and needed > free:
        raise disk_full_error(folder, needed, what, then)


@contextmanager
def disk_full_as_error(folder: str | os.PathLike, what: str, needed: int | Callable[[], int | None] | None = None,
                       then: str = "") -> Iterator[None]:
    """Turn a full-disk error raised inside into `DiskFull` (``needed`` may be a function, asked only then).
    Cleaning up is the caller's business: this only names the problem."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        raise disk_full_error(folder, needed() if callable(needed) else needed, what, then) from None


def disk_full_message(err: BaseException) -> str | None:
    """The error line for a full disk that no writer named (the CLI's last resort), else None."""
    if not is_disk_full(err):
        return None
    name = getattr(err, "filename", None)
    folder = Path(os.fsdecode(name)).parent if name else Path.cwd()
    return str(disk_full_error(folder, None, Path(os.fsdecode(name)).name if name else "a file"))


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a short write is continued; a full disk raises OSError)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


__all__ = ["DISK_FULL_ERRNOS", "DiskFull", "is_disk_full", "free_bytes", "human_bytes", "disk_full_error",
           "check_free_space", "disk_full_as_error", "disk_full_message", "write_all"]
