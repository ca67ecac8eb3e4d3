"""MoE-SpAc's released prefetcher: threshold-gated, level-ordered prefetch from integer utility levels
(moelab.policies.spac_released); `policy=spac_released` pairs it with its eviction and residency split."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.registry import register
from moelab.core.types import CacheView, PrefetchRequest, RoutingEvent
from moelab.policies.base import PrefetchPolicy
from moelab.policies.spac_released import ReleasedSpacEngine


@register("prefetch", "spac_released")
class SpacReleasedPrefetch(PrefetchPolicy):
    """Asks for exactly the copies the released engine decides, in its order (priority falls with the order);
    the victims are the engine's too when `cache=spac_released` shares it. Every pass updates the levels, the
    prompt's included, as in the released code."""

    def __init__(self, levels: int = 5, up: int = 5, down: int = 1, threshold: int = 1):
        self.engine = ReleasedSpacEngine(levels, up, down, threshold)

    def reset(self) -> None:
        super().reset()
        self._ready = False

    def _begin(self, cache: CacheView) -> None:
        if not self._ready:  # the capacity is known from the first cache view
            self.engine.reset(self.spec, cache.capacity)
            self._ready = True
        self.engine.sync(cache.resident | cache.loading)

    def _requests(self) -> list[PrefetchRequest]:
        issued = self.engine.take_issued()
        return [PrefetchRequest(key, priority=float(len(issued) - i)) for i, (key, _) in enumerate(issued)]

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        self._begin(cache)
        self.engine.layer_start(event.layer, dict(zip(event.experts, event.counts)))
        return self._requests()

    def on_step_end(self, step: int, cache: CacheView) -> Sequence[PrefetchRequest]:
        self._begin(cache)
        self.engine.finish_pending()
        return self._requests()
