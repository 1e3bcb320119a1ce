"""Check a .npy header against the bytes behind it before numpy allocates the array it declares.

``np.load`` trusts the header: a file (or an .npz member) whose header declares a [10**6, 10**6] array makes
numpy allocate terabytes before it notices the data is not there. Reading the header first and comparing the
declared size with the bytes that follow turns that into one error line.
"""

from __future__ import annotations

import math
from typing import BinaryIO

import numpy as np

from featbench.errors import FeatbenchError


def declared_nbytes(fh: BinaryIO, where: str) -> tuple[int, int]:
    """(bytes the header declares, bytes of magic + header) of the .npy stream ``fh``, read from its start."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        else:
            shape, _, dtype = fmt.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise FeatbenchError(f"{where}: not a readable .npy array ({str(err)[:120]})") from None
    return math.prod(int(n) for n in shape) * dtype.itemsize, int(fh.tell())


def check_npy_size(fh: BinaryIO, available: int, where: str) -> None:
    """Refuse a .npy stream whose header declares more data than the ``available`` bytes it comes in."""
    nbytes, header = declared_nbytes(fh, where)
    if nbytes > available - header:
        raise FeatbenchError(f"{where}: its header declares {nbytes:,} bytes of data but only "
                             f"{max(available - header, 0):,} follow; the file is truncated or corrupt, re-save it")


def load_npz(path, bad: str, fix: str = "") -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``, each member's header checked against its size before numpy
    allocates it; a file that is no readable .npz is one error line: ``bad (the reason); fix``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            for info in data.zip.infolist():
                with data.zip.open(info) as fh:
                    check_npy_size(fh, info.file_size, f"{path} member {info.filename}")
            return {k: data[k] for k in data.files}
    except FeatbenchError:
        raise
    except Exception as err:  # not a zip, a pickled member, a corrupt stream, ...
        raise FeatbenchError(f"{bad} ({str(err)[:200]})" + (f"; {fix}" if fix else "")) from None


__all__ = ["declared_nbytes", "check_npy_size", "load_npz"]
