"""First-in-first-out eviction: the expert that entered the cache earliest goes, however recently it was used.
A baseline that separates the value of recency (LRU) from that of mere arrival order."""

from __future__ import annotations

from moelab.core.registry import register
from moelab.core.types import ExpertKey
from moelab.policies.cache.lru import LruCache


@register("cache", "fifo")
class FifoCache(LruCache):
    """LRU's order kept by insertion only: a use does not move the expert to the back."""

    def on_access(self, key: ExpertKey) -> None:
        if key not in self._order:  # resident without an insert seen (cannot happen through the executor)
            self._order[key] = None
