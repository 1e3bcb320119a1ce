"""featbench.lru.LRU: the per-process memo behind open caches, big arrays and text towers."""

from featbench.lru import LRU


def test_keeps_the_most_recently_used_and_evicts_the_oldest():
    closed, made = [], []
    memo = LRU(2, on_evict=closed.append)

    def make(v):
        return lambda: made.append(v) or v

    assert memo.get_or_make("a", make("A")) == "A"
    assert memo.get_or_make("b", make("B")) == "B"
    assert memo.get_or_make("a", make("A2")) == "A"  # a hit: not made again, now the newest
    assert memo.get_or_make("c", make("C")) == "C"  # pushes out b, the least recently used
    assert list(memo) == ["a", "c"] and closed == ["B"] and made == ["A", "B", "C"]
