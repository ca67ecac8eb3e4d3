"""Belady-optimal replacement: the fewest expert copies any cache of a given size could make.

Used for `floor_ms_per_token` (the transfer floor of a routing at a budget) and, later, as
the offline-optimal cache policy. Accesses are taken one by one in execution order, which
is a lower bound for an executor that must hold all of a layer's experts at once.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Hashable, Sequence


def belady_misses(accesses: Sequence[tuple[int, Hashable]], capacity: int) -> Counter:
    """Misses per step for `accesses` [(step, key), ...] under optimal replacement with `capacity` slots."""
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    n = len(accesses)
    never = n + 1
    next_use = [never] * n
    last_seen: dict[Hashable, int] = {}
    for i in range(n - 1, -1, -1):
        key = accesses[i][1]
        next_use[i] = last_seen.get(key, never)
        last_seen[key] = i
    resident: dict[Hashable, int] = {}
    heap: list[tuple[int, int, Hashable]] = []  # (-next use, tiebreak, key); stale entries skipped
    misses: Counter = Counter()
    for i, (step, key) in enumerate(accesses):
        if key not in resident:
            misses[step] += 1
            while len(resident) >= capacity:
                neg, _, victim = heapq.heappop(heap)
                if resident.get(victim) == -neg:
                    del resident[victim]
        resident[key] = next_use[i]
        heapq.heappush(heap, (-next_use[i], i, key))
    return misses
