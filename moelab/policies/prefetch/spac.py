"""MoE-SpAc's prefetcher: bring the highest-utility experts in, in the same utility space eviction uses."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.registry import register
from moelab.core.types import CacheView, PrefetchRequest, RoutingEvent
from moelab.policies.base import PrefetchPolicy
from moelab.policies.utility import UtilityEstimator


@register("prefetch", "spac")
class SpacPrefetch(PrefetchPolicy):
    """After each layer of each pass, update that layer's utilities from the pass's frequency map, then ask for
    the `capacity` highest-utility experts (those above `threshold`) with priority = utility, ties broken by
    how soon their layer runs next. The executor never lets a prefetch evict an expert wanted at least as
    much, and the `utility` cache evicts the lowest utility: prefetch and eviction share one ranking.
    With speculative decoding each pass verifies gamma+1 tokens, so the map counts tokens per expert (the
    paper's lookahead sensor); with autoregressive decoding it degenerates to the binary signal."""

    def __init__(self, mode: str = "counter", levels: int = 5, up_frac: float = 0.55, down: int = 1,
                 beta: float = 0.7, threshold: float = 0.0, up: int | None = None):
        self.estimator = UtilityEstimator(mode, levels, up_frac, down, beta, up)
        self.threshold = float(threshold)

    def reset(self) -> None:
        super().reset()
        self.estimator.reset()
        self.capacity: int | None = None

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        if event.phase == "prefill":  # a prompt's many tokens say little about the next pass
            return ()
        self.estimator.update(event.layer, dict(zip(event.experts, event.counts)), event.num_tokens)
        layers = self.spec.moe_layers
        here, n = layers.index(event.layer), len(layers)
        # 1e-3 x how soon each layer runs next (1 for the next layer, falling to 1/n for this layer next pass)
        soon = {layer: 1e-3 * (1 - ((i - here - 1) % n) / n) for i, layer in enumerate(layers)}
        top = self.estimator.top(cache.capacity, soon, self.threshold)
        return [PrefetchRequest(key, priority=p) for p, key in top]
