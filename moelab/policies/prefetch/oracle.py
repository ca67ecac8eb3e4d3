"""The upper bound: prefetch exactly what the run will use, as early as the cache allows."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.registry import register
from moelab.core.types import CacheView, ExpertKey, ModelSpec, PrefetchRequest, RoutingEvent
from moelab.policies.base import PrefetchPolicy


@register("prefetch", "oracle")
class OraclePrefetch(PrefetchPolicy):
    """Knows the run's routing from a first pass over the same prompts (the runner records it; with
    speculative execution off the second pass routes identically). After each layer it asks for the
    experts of the next `horizon` layer calls in order of need (sooner = higher priority); the
    executor issues them while slots that nothing sooner needs can be freed."""

    needs_future = True

    def __init__(self, horizon: int | None = None):
        self.horizon = None if horizon is None else int(horizon)
        self.future: list[tuple[int, int, tuple[int, ...]]] = []

    def reset(self, spec: ModelSpec) -> None:
        super().reset(spec)
        self._pos = {(s, layer): i for i, (s, layer, _) in enumerate(self.future)}

    def set_future(self, routing: Sequence[tuple[int, int, tuple[int, ...]]]) -> None:
        self.future = [(int(s), int(layer), tuple(e)) for s, layer, e in routing]
        self._pos = {(s, layer): i for i, (s, layer, _) in enumerate(self.future)}

    def _ahead(self, start: int) -> list[PrefetchRequest]:
        horizon = self.horizon or len(self.spec.moe_layers)
        requests = []
        for j, (_, layer, experts) in enumerate(self.future[start : start + horizon]):
            requests += [PrefetchRequest(ExpertKey(layer, e), priority=float(horizon - j)) for e in experts]
        return requests

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        i = self._pos.get((event.step, event.layer))
        return () if i is None else self._ahead(i + 1)

    def on_step_end(self, step: int, cache: CacheView) -> Sequence[PrefetchRequest]:
        nxt = self._pos.get((step + 1, self.spec.moe_layers[0]))
        return () if nxt is None else self._ahead(nxt)
