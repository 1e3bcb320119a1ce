"""A bounded, least-recently-used memo: what a process keeps between cells (open caches, big arrays, text towers).

One mechanism for every per-process memo, so each says only what it keys on and how big it may grow.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable


class LRU(OrderedDict):
    """An OrderedDict that keeps at most ``limit`` entries; ``get_or_make`` is the only way in.

    ``on_evict(value)`` runs for each entry pushed out (e.g. closing a file).
    """

    def __init__(self, limit: int, on_evict: Callable[[Any], None] | None = None):
        super().__init__()
        self.limit = limit
        self.on_evict = on_evict

    def get_or_make(self, key, make: Callable[[], Any]):
        """The value for ``key``, made by ``make()`` on a miss; marks it the most recently used."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.limit:
            _, old = self.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old)
        return value


__all__ = ["LRU"]
