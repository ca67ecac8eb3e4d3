"""Belady-optimal misses: a hand-checked sequence, and never more misses than LRU."""

import random
from collections import OrderedDict

from moelab.metrics.belady import belady_misses


def lru_misses(seq, capacity):
    cache, misses = OrderedDict(), 0
    for _, k in seq:
        if k in cache:
            cache.move_to_end(k)
            continue
        misses += 1
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[k] = None
    return misses


def test_textbook_sequence():
    # capacity 3: 7 0 1 2 0 3 0 4 2 3 0 3 2 -> 7 misses under OPT (classic example)
    seq = [(i, k) for i, k in enumerate([7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2])]
    assert sum(belady_misses(seq, 3).values()) == 7


def test_misses_per_step():
    seq = [(0, "a"), (0, "b"), (1, "a"), (1, "c"), (2, "b")]
    m = belady_misses(seq, 2)
    assert m[0] == 2 and m[1] == 1 and m[2] == 0  # c evicts a (never used again), keeping b for step 2


def test_never_worse_than_lru():
    rng = random.Random(0)
    for _ in range(50):
        seq = [(i, rng.randrange(12)) for i in range(200)]
        cap = rng.randrange(1, 10)
        assert sum(belady_misses(seq, cap).values()) <= lru_misses(seq, cap)
