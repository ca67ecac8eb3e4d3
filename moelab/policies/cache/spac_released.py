"""MoE-SpAc's released eviction: the slot of lowest utility level goes (ties: lowest (layer, expert)), the layer
being computed frozen; with `prefetch=spac_released` the victims are exactly the released engine's."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from moelab.core.context import RunContext
from moelab.core.registry import register
from moelab.core.types import ExpertKey, RoutingEvent
from moelab.policies.base import CachePolicy
from moelab.policies.spac_released import ReleasedSpacEngine


@register("cache", "spac_released")
class SpacReleasedCache(CachePolicy):
    """Shares `prefetch=spac_released`'s engine. Under another prefetcher it keeps its own engine, fed by the
    routing events, for the levels only (nothing is prefetched then): the resident expert of lowest level goes.
    In both cases the executor protects the running layer's experts (the frozen layer) while they compute."""

    def __init__(self, levels: int = 5, up: int = 5, down: int = 1, threshold: int = 1):
        self.own = ReleasedSpacEngine(levels, up, down, threshold)
        self.engine = self.own

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        self.engine = ctx.engine or self.own

    def reset(self) -> None:
        super().reset()
        if self.engine is self.own:
            self.own.reset(self.spec, self.capacity)

    def observe(self, event: RoutingEvent) -> None:
        if self.engine is self.own:
            self.own.estimator.update(event.layer, dict(zip(event.experts, event.counts)), event.num_tokens)

    def level(self, key: ExpertKey) -> float:
        if self.engine is self.own:
            return self.own.estimator.by_layer.get(key.layer, {}).get(key.expert, 0)
        return self.engine.slot_level.get(key, 0)

    def on_insert(self, key: ExpertKey) -> None:
        self.engine.inserted(key)

    def on_evict(self, key: ExpertKey) -> None:
        self.engine.evicted(key)

    def victim_where(self, allowed: Callable[[ExpertKey], bool], resident: Collection[ExpertKey]) -> ExpertKey | None:
        chosen = self.engine.next_victim()
        if chosen is not None and chosen in resident and allowed(chosen):
            return chosen
        ok = [k for k in resident if allowed(k)]
        return min(ok, key=lambda k: (self.level(k), k.layer, k.expert)) if ok else None

    def victim(self, candidates: Sequence[ExpertKey]) -> ExpertKey:
        return self.victim_where(lambda k: True, candidates) or candidates[0]
