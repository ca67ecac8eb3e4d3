"""Least-recently-used eviction: the standard baseline (mixtral-offloading, most peers)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence

from moelab.core.registry import register
from moelab.core.types import ExpertKey
from moelab.policies.base import CachePolicy


@register("cache", "lru")
class LruCache(CachePolicy):
    """Evicts the candidate whose last use (or insertion) is oldest."""

    def reset(self) -> None:
        super().reset()
        self._order: OrderedDict[ExpertKey, None] = OrderedDict()

    def _touch(self, key: ExpertKey) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    on_insert = _touch
    on_access = _touch

    def on_evict(self, key: ExpertKey) -> None:
        self._order.pop(key, None)

    def victim_where(self, allowed: Callable[[ExpertKey], bool], resident: Collection[ExpertKey]) -> ExpertKey | None:
        for key in self._order:  # oldest first: usually the first acceptable key is near the front
            if key in resident and allowed(key):
                return key
        return None

    def victim(self, candidates: Sequence[ExpertKey]) -> ExpertKey:
        allowed = set(candidates)
        for key in self._order:
            if key in allowed:
                return key
        return candidates[0]
