"""The upper bound: prefetch exactly what the run will use, as early as the cache allows."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.context import RunContext
from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.core.types import CacheView, ExpertKey, PrefetchRequest, RoutingEntry, RoutingEvent
from moelab.policies.base import PrefetchPolicy


@register("prefetch", "oracle")
class OraclePrefetch(PrefetchPolicy):
    """Knows the run's routing from a first pass over the same prompts (the runner records it; with
    speculative execution off the second pass routes identically). After each layer it asks for the
    experts it will need next in order of need (sooner = higher priority); the executor issues them while
    slots that nothing sooner needs can be freed, and evicts what is needed furthest ahead first."""

    needs_future = True

    def __init__(self, horizon: int = 1):
        if int(horizon) < 1:
            raise ConfigError(f"prefetch.horizon must be >= 1 layer call, got {horizon}")
        self.horizon = int(horizon)
        self.future: list[RoutingEntry] = []

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        if ctx.future is not None:  # the profile pass's routing
            self.future = [(int(s), int(layer), tuple(e)) for s, layer, e in ctx.future]
        self._pos = {(s, layer): i for i, (s, layer, _) in enumerate(self.future)}

    def _ahead(self, start: int, capacity: int) -> list[PrefetchRequest]:
        """Each expert at its next use from `start` on, sooner first, until twice the cache's worth of distinct
        experts: the ranking eviction follows (Belady's rule). Only those of the next `horizon` layer calls are
        fetched now; fetching further ahead would evict experts needed sooner than a later eviction would."""
        seen: dict[ExpertKey, float] = {}
        for j in range(start, len(self.future)):
            _, layer, experts = self.future[j]
            for e in experts:
                seen.setdefault(ExpertKey(layer, e), float(start - j))
            if len(seen) >= 2 * capacity:
                break
        return [PrefetchRequest(k, priority=p, fetch=p > -self.horizon) for k, p in seen.items()]

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        i = self._pos.get((event.step, event.layer))
        return () if i is None else self._ahead(i + 1, cache.capacity)

    def on_step_end(self, step: int, cache: CacheView) -> Sequence[PrefetchRequest]:
        nxt = self._pos.get((step + 1, self.spec.moe_layers[0]))
        return () if nxt is None else self._ahead(nxt, cache.capacity)
