"""User-facing errors.

A `FeatbenchError` is a mistake the user can fix (a missing file, a bad flag, a cache that breaks the
contract). The CLI prints its message as one line and exits with code 2 — never a traceback. Messages
name the file or flag at fault and say what to do.
"""


class FeatbenchError(Exception):
    """An error caused by user input; its message is shown as-is on one line."""


class CacheContractError(FeatbenchError):
    """An HDF5 file does not follow the schema-v1 cache contract."""


class FingerprintMismatch(FeatbenchError):
    """Two caches (or a cache and the current model) were built by different encoders/preprocessing."""


def short_repr(value, limit: int = 60, *, plain: bool = False) -> str:
    """A user value for an error line (repr, or str with ``plain``), cut so a huge value never floods it."""
    text = str(value) if plain else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
