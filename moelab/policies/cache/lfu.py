"""Least-frequently-used eviction: the expert used in the fewest layer calls goes (LRU among equals).

Frequencies count layer calls that used the expert (a miss costs one copy per call, however many of the call's
tokens chose it) over the whole run, resident or not, so an expert that was evicted keeps its history. With
`decay` < 1 every count is multiplied by `decay` at each new forward step: an exponential forgetting that lets
the cache follow a drifting workload (decay=1: plain, perfect-history LFU).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.core.types import ExpertKey, RoutingEvent
from moelab.policies.cache.lru import LruCache


@register("cache", "lfu")
class LfuCache(LruCache):
    def __init__(self, decay: float = 1.0):
        if isinstance(decay, bool) or not 0 < float(decay) <= 1:
            raise ConfigError(f"cache.decay must be in (0, 1] (1: no forgetting), got {decay!r}")
        self.decay = float(decay)

    def reset(self) -> None:
        super().reset()
        self.freq: dict[ExpertKey, float] = {}
        self._step: int | None = None

    def observe(self, event: RoutingEvent) -> None:
        if self._step is not None and event.step != self._step and self.decay < 1:
            # counts are kept in units of the current step: scaling them all once a step costs O(keys seen)
            self.freq = {k: f * self.decay for k, f in self.freq.items()}
        self._step = event.step
        for e in event.experts:
            key = ExpertKey(event.layer, e)
            self.freq[key] = self.freq.get(key, 0.0) + 1.0

    def victim_where(self, allowed: Callable[[ExpertKey], bool], resident: Collection[ExpertKey]) -> ExpertKey | None:
        best, best_f = None, float("inf")
        for key in self._order:  # oldest first: strict < keeps the least recently used among equal counts
            if key in resident and allowed(key):
                f = self.freq.get(key, 0.0)
                if f < best_f:
                    best, best_f = key, f
        return best

    def victim(self, candidates: Sequence[ExpertKey]) -> ExpertKey:
        allowed = set(candidates)
        found = self.victim_where(allowed.__contains__, allowed)
        return found if found is not None else candidates[0]
