"""How well a prefetch policy's requests for a layer (its prediction) matched the router's choice, decode only.

What a policy asks to fetch for a layer before that layer runs is its prediction for it. `prediction_topk_recall`
is the mean over layers of |predicted & chosen| / |chosen|; `prediction_precision` pools |predicted & chosen| /
|predicted|; `prediction_coverage` is the share of decode layer calls that had a prediction at all (a lookahead
of distance d has none for the first d MoE layers of a step). The router's true choice counts, also when
speculative execution ran something else. Where the router did not run (execution.true_router=skip) there is
no choice to score against: that layer is left out of `prediction_recall_layers`, and recall and precision,
which would otherwise cover only the layers that remain, are NaN; calls and coverage need no router.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from moelab.core.registry import register
from moelab.core.types import LayerCall, PrefetchRequest
from moelab.observers.base import Observer

NAN = float("nan")


@register("observer", "prediction_recall")
class PredictionRecall(Observer):
    name = "prediction_recall"

    def reset(self) -> None:
        super().reset()
        self.wanted: dict[int, set[int]] = {}  # layer -> experts requested since the layer last ran
        # per layer: [predicted and chosen, chosen, predicted, layer calls with a prediction]
        self.recall: dict[int, list[int]] = {}
        self.decode_layer_calls = 0
        self.unmeasured: set[int] = set()  # layers with a predicted call whose router did not run

    def on_requests(self, step: int, requests: Sequence[PrefetchRequest]) -> None:
        for r in requests:
            if r.fetch:
                self.wanted.setdefault(r.key.layer, set()).add(r.key.expert)

    def on_layer(self, call: LayerCall) -> None:
        wanted = self.wanted.pop(call.layer, None)
        if call.phase not in ("decode", "verify"):
            return
        self.decode_layer_calls += 1
        if wanted is not None:
            acc = self.recall.setdefault(call.layer, [0, 0, 0, 0])
            acc[3] += 1
            if call.router_choice is None:
                self.unmeasured.add(call.layer)
                return
            chosen = set(call.router_choice)
            acc[0] += len(chosen & wanted)
            acc[1] += len(chosen)
            acc[2] += len(wanted)

    def row(self) -> dict[str, Any]:
        rec = {layer: v for layer, v in sorted(self.recall.items()) if v[1] and layer not in self.unmeasured}
        per_layer = {str(layer): v[0] / v[1] for layer, v in rec.items()}
        hits, predicted = (sum(v[i] for v in rec.values()) for i in (0, 2))
        calls = sum(v[3] for v in self.recall.values())
        whole = not self.unmeasured
        return {
            "prediction_topk_recall": float(np.mean(list(per_layer.values()))) if per_layer and whole else NAN,
            "prediction_precision": hits / predicted if predicted and whole else NAN,
            "prediction_calls": float(calls),
            "prediction_recall_layers": json.dumps(per_layer),
            "prediction_coverage": calls / self.decode_layer_calls if self.decode_layer_calls else NAN,
        }
