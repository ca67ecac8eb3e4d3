"""MoE-SpAc's speculative utility estimator: a score per (layer, expert) from the frequency map each forward
step shows at each layer, changed with inertia so one-off fluctuations do not churn the cache.

Two update rules (the paper does not pin the rule down exactly, so both are here and measurable):
- `counter` (default; what MoE-SpAc's released code does): an integer level s in 0..levels; with c the
  tokens routed to the expert in this pass, s rises by one when c - s >= up and falls by one when
  s - c >= down. The code's constants are levels=5, up=5, down=1 for gamma=8 (9 tokens a pass); here
  `up` is ceil(up_frac * tokens in the pass) so that it scales with gamma (up_frac=0.55 gives 5 at 9 tokens);
  a fixed `up` (the code's 5 whatever the pass's size) is what `policy=spac_released` uses.
- `ema`: u <- beta * u + (1 - beta) * c / tokens (a plain reading of the paper's "inertia").
Scores are normalised to [0, 1] (s / levels for the counter) so prefetch priorities and eviction compare
in one utility space.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

from moelab.core.errors import ConfigError
from moelab.core.types import ExpertKey

MODES = ("counter", "ema")


class UtilityEstimator:
    def __init__(self, mode: str = "counter", levels: int = 5, up_frac: float = 0.55, down: int = 1,
                 beta: float = 0.7, up: int | None = None):
        if mode not in MODES:
            raise ConfigError(f"unknown utility mode {mode!r}; allowed: {', '.join(MODES)}")
        if int(levels) < 1 or not 0 < float(up_frac) <= 1 or int(down) < 1 or not 0 <= float(beta) < 1:
            raise ConfigError(f"utility parameters out of range: levels={levels} (>=1), up_frac={up_frac} (0..1], "
                              f"down={down} (>=1), beta={beta} [0..1)")
        if up is not None and (isinstance(up, bool) or int(up) < 1):
            raise ConfigError(f"utility up must be an integer >= 1 (or null to scale with up_frac), got {up!r}")
        self.mode, self.levels, self.up_frac, self.down, self.beta = mode, int(levels), float(up_frac), int(down), \
            float(beta)
        self.up = None if up is None else int(up)
        self.reset()

    def reset(self) -> None:
        self.by_layer: dict[int, dict[int, float]] = {}  # layer -> expert -> raw score (> 0 only)
        self._sorted: dict[int, list[tuple[float, int]]] = {}  # layer -> (-utility, expert), best first

    @property
    def raw(self) -> dict[ExpertKey, float]:
        return {ExpertKey(layer, e): s for layer, d in self.by_layer.items() for e, s in d.items()}

    def update(self, layer: int, counts: Mapping[int, int], tokens: int) -> None:
        """Fold one pass's frequency map of `layer` (expert -> tokens routed) into the scores. Touches that layer
        only, so a layer call costs O(experts of the layer), not O(all experts of the model)."""
        scores = self.by_layer.setdefault(layer, {})
        up = self.up if self.up is not None else max(1, math.ceil(self.up_frac * tokens))
        for e in set(scores) | set(counts):
            c = counts.get(e, 0)
            s = scores.get(e, 0.0)
            if self.mode == "ema":
                s = self.beta * s + (1 - self.beta) * c / max(1, tokens)
            elif c - s >= up:
                s = min(self.levels, s + 1)
            elif s - c >= self.down:
                s = max(0, s - 1)
            if s > 1e-6:
                scores[e] = s
            else:
                scores.pop(e, None)
        norm = self.levels if self.mode == "counter" else 1.0
        self._sorted[layer] = sorted((-s / norm, e) for e, s in scores.items())

    def utility(self, key: ExpertKey) -> float:
        s = self.by_layer.get(key.layer, {}).get(key.expert, 0.0)
        return s / self.levels if self.mode == "counter" else s

    def ranked(self, threshold: float = 0.0) -> list[tuple[float, ExpertKey]]:
        """(utility, key) above `threshold`, highest first (ties by layer, then expert)."""
        out = [(-nu, ExpertKey(layer, e)) for layer, lst in self._sorted.items() for nu, e in lst]
        return sorted((x for x in out if x[0] > threshold), key=lambda x: (-x[0], x[1]))

    def top(self, n: int, bonus: dict[int, float], threshold: float = 0.0) -> list[tuple[float, ExpertKey]]:
        """The `n` keys of highest utility + bonus[layer] (above `threshold` utility), as (that sum, key), best
        first; equal sums in `ranked`'s order. A merge of the per-layer sorted lists: O(n log layers) a call."""
        heads = []
        for layer, lst in self._sorted.items():
            if lst and -lst[0][0] > threshold:
                b = bonus.get(layer, 0.0)
                heads.append(((-(-lst[0][0] + b), lst[0][0], layer, lst[0][1]), layer, 0))
        heapq.heapify(heads)
        out: list[tuple[float, ExpertKey]] = []
        while heads and len(out) < n:
            (neg_p, _, layer, e), _, i = heapq.heappop(heads)
            out.append((-neg_p, ExpertKey(layer, e)))
            lst = self._sorted[layer]
            if i + 1 < len(lst) and -lst[i + 1][0] > threshold:
                nu, e2 = lst[i + 1]
                heapq.heappush(heads, ((-(-nu + bonus.get(layer, 0.0)), nu, layer, e2), layer, i + 1))
        return out
