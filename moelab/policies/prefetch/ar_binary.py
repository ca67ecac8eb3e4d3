"""The autoregressive baseline: expect each layer to reuse what the last step used there."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.core.types import CacheView, ExpertKey, PrefetchRequest, RoutingEvent
from moelab.policies.base import PrefetchPolicy


@register("prefetch", "ar_binary")
class ArBinaryPrefetch(PrefetchPolicy):
    """Per layer a score per expert: 1 if the last step used it, else 0 (`decay`=0, the binary signal), or an
    EMA of those 0/1 activations (`decay`>0: score <- decay*score + (1-decay)*used). After each step it asks
    for every layer's top-`n` experts by score (n=None: as many as the layer used last step), earlier
    layers first since they are needed first."""

    def __init__(self, decay: float = 0.0, n: int | None = None):
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(f"prefetch.decay must be in [0, 1), got {decay}")
        if n is not None and int(n) < 1:
            raise ConfigError(f"prefetch.n must be >= 1 (or null), got {n}")
        self.decay = float(decay)
        self.n = None if n is None else int(n)

    def reset(self) -> None:
        super().reset()
        self.scores: dict[int, dict[int, float]] = {}
        self.last_count: dict[int, int] = {}

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        used = set(event.experts)
        scores = self.scores.setdefault(event.layer, {})
        for e in set(scores) | used:
            s = self.decay * scores.get(e, 0.0) + (1.0 - self.decay) * (e in used)
            if s > 1e-4:
                scores[e] = s
            else:
                scores.pop(e, None)
        self.last_count[event.layer] = len(used)
        return ()

    def on_step_end(self, step: int, cache: CacheView) -> Sequence[PrefetchRequest]:
        requests = []
        layers = self.spec.moe_layers
        for pos, layer in enumerate(layers):
            scores = self.scores.get(layer)
            if not scores:
                continue
            n = self.n or self.last_count.get(layer, self.spec.top_k)
            for e in sorted(scores, key=lambda e: (-scores[e], e))[:n]:
                requests.append(PrefetchRequest(ExpertKey(layer, e), priority=(len(layers) - pos) + scores[e] / 2))
        return requests
