"""MoE-SpAc's speculative utility estimator: a score per (layer, expert) from the frequency map each forward
step shows at each layer, changed with inertia so one-off fluctuations do not churn the cache.

Two update rules (the paper's text was not available to us; see the closing note of the SpAc issue):
- `counter` (default; what MoE-SpAc's released code does): an integer level s in 0..levels; with c the
  tokens routed to the expert in this pass, s rises by one when c - s >= up and falls by one when
  s - c >= down. The code's constants are levels=5, up=5, down=1 for gamma=8 (9 tokens a pass); here
  `up` is ceil(up_frac * tokens in the pass) so that it scales with gamma (up_frac=0.55 gives 5 at 9 tokens).
- `ema`: u <- beta * u + (1 - beta) * c / tokens (the digest's natural reading of "inertia").
Scores are normalised to [0, 1] (s / levels for the counter) so prefetch priorities and eviction compare
in one utility space.
"""

from __future__ import annotations

import math

from moelab.core.errors import ConfigError
from moelab.core.types import ExpertKey

MODES = ("counter", "ema")


class UtilityEstimator:
    def __init__(self, mode: str = "counter", levels: int = 5, up_frac: float = 0.55, down: int = 1,
                 beta: float = 0.7):
        if mode not in MODES:
            raise ConfigError(f"unknown utility mode {mode!r}; allowed: {', '.join(MODES)}")
        if int(levels) < 1 or not 0 < float(up_frac) <= 1 or int(down) < 1 or not 0 <= float(beta) < 1:
            raise ConfigError(f"utility parameters out of range: levels={levels} (>=1), up_frac={up_frac} (0..1], "
                              f"down={down} (>=1), beta={beta} [0..1)")
        self.mode, self.levels, self.up_frac, self.down, self.beta = mode, int(levels), float(up_frac), int(down), \
            float(beta)
        self.reset()

    def reset(self) -> None:
        self.raw: dict[ExpertKey, float] = {}

    def update(self, layer: int, counts: dict[int, int], tokens: int) -> None:
        """Fold one pass's frequency map of `layer` (expert -> tokens routed) into the scores."""
        keys = {k for k in self.raw if k.layer == layer} | {ExpertKey(layer, e) for e in counts}
        up = max(1, math.ceil(self.up_frac * tokens))
        for key in keys:
            c = counts.get(key.expert, 0)
            s = self.raw.get(key, 0.0)
            if self.mode == "ema":
                s = self.beta * s + (1 - self.beta) * c / max(1, tokens)
            elif c - s >= up:
                s = min(self.levels, s + 1)
            elif s - c >= self.down:
                s = max(0, s - 1)
            if s > 1e-6:
                self.raw[key] = s
            else:
                self.raw.pop(key, None)

    def utility(self, key: ExpertKey) -> float:
        s = self.raw.get(key, 0.0)
        return s / self.levels if self.mode == "counter" else s

    def ranked(self, threshold: float = 0.0) -> list[tuple[float, ExpertKey]]:
        """(utility, key) above `threshold`, highest first."""
        out = [(self.utility(k), k) for k in self.raw]
        return sorted((x for x in out if x[0] > threshold), key=lambda x: (-x[0], x[1]))
