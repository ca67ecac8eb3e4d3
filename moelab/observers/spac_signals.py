"""MoE-SpAc's claim, measured on the same verification passes: the speculative frequency map predicts the next
pass's experts better than the binary signal one autoregressive step would give.

Per layer, over consecutive verification passes s and s+1 of one prompt: `binary` is the experts of pass s's
first token; `freq` every expert pass s activated (the frequency map's support); `freq_at_k` the map's top
experts by token count, as many as the binary signal names (the same prefetch budget). Recall = |signal & next|
/ |next|, precision = |signal & next| / |signal|; per-layer means, then the mean over layers. A layer whose
router did not run in some pass (execution.true_router=skip) has no routing to compare: it is left out of
`signal_layers` and the means over layers are NaN.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from moelab.core.registry import register
from moelab.core.types import LayerCall
from moelab.observers.base import Observer

NAN = float("nan")


@register("observer", "spac_signals")
class SignalComparison(Observer):
    name = "spac_signals"

    def reset(self) -> None:
        super().reset()
        # (step, layer, experts of the pass's first token, tokens per expert over the pass)
        self.signals: list[tuple[int, int, tuple[int, ...], dict[int, int]]] = []
        self.unmeasured: set[int] = set()  # layers with a verification pass whose router did not run

    def on_layer(self, call: LayerCall) -> None:
        if call.phase == "verify" and call.router_choice is None:
            self.unmeasured.add(call.layer)
        elif call.phase == "verify":
            first = tuple(sorted(set(call.router_choice[: call.top_k])))
            self.signals.append((call.step, call.layer, first, dict(Counter(call.router_choice))))

    def row(self) -> dict[str, Any]:
        by_layer: dict[int, list[tuple[int, tuple[int, ...], dict[int, int]]]] = defaultdict(list)
        for step, layer, first, freq in self.signals:
            by_layer[layer].append((step, first, freq))
        sums: dict[str, list[float]] = defaultdict(list)
        per_layer: dict[str, dict[str, float]] = defaultdict(dict)
        for layer, seq in sorted(by_layer.items()):
            if layer in self.unmeasured:
                continue
            acc: dict[str, list[float]] = defaultdict(list)
            for (s0, first, freq), (s1, _, nxt_freq) in zip(seq, seq[1:]):
                if s1 != s0 + 1:  # a new prompt began in between
                    continue
                nxt = set(nxt_freq)
                ranked = sorted(freq, key=lambda e: (-freq[e], e))
                for name, sig in (("binary", set(first)), ("freq", set(freq)),
                                  ("freq_at_k", set(ranked[: len(first)]))):
                    acc[f"{name}_recall"].append(len(sig & nxt) / len(nxt))
                    acc[f"{name}_precision"].append(len(sig & nxt) / len(sig))
            for name, vals in acc.items():
                per_layer[name][str(layer)] = float(np.mean(vals))
                sums[name].append(float(np.mean(vals)))
        out: dict[str, Any] = {f"signal_{n}": float(np.mean(v)) for n, v in sums.items()}
        if self.unmeasured:
            out = {f"signal_{s}_{m}": NAN for s in ("binary", "freq", "freq_at_k") for m in ("recall", "precision")}
        out["signal_layers"] = json.dumps(per_layer) if per_layer else "{}"
        return out
