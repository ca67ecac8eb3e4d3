"""MoE-SpAc's eviction: the resident expert of lowest speculative utility goes first (LRU among equals)."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.context import RunContext
from moelab.core.registry import register
from moelab.core.types import ExpertKey, RoutingEvent
from moelab.policies.base import CachePolicy
from moelab.policies.cache.lru import LruCache
from moelab.policies.utility import UtilityEstimator


@register("cache", "utility")
class UtilityCache(LruCache):
    """Reads the prefetcher's estimator when it has one (`prefetch=spac`: one utility space for both); else keeps
    its own, fed by the same routing events, so `cache=utility` also works under other prefetchers."""

    def __init__(self, mode: str = "counter", levels: int = 5, up_frac: float = 0.55, down: int = 1,
                 beta: float = 0.7, up: int | None = None):
        self.own = UtilityEstimator(mode, levels, up_frac, down, beta, up)
        self.estimator = self.own

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        self.estimator = ctx.estimator or self.own

    def reset(self) -> None:
        super().reset()
        self.own.reset()

    def observe(self, event: RoutingEvent) -> None:
        if self.estimator is self.own and event.phase != "prefill":
            self.own.update(event.layer, dict(zip(event.experts, event.counts)), event.num_tokens)

    victim_where = CachePolicy.victim_where  # by utility over every candidate, not LRU's first acceptable

    def victim(self, candidates: Sequence[ExpertKey]) -> ExpertKey:
        age = {k: i for i, k in enumerate(self._order)}
        return min(candidates, key=lambda k: (self.estimator.utility(k), age.get(k, -1)))
