"""`execution.true_router=skip`: under speculative execution with predicted weights, a layer with a prediction
does not run its router (the prediction is its routing, as in Speculating Experts' released code), and the run is
otherwise the `true_router=compute` run: the same experts with the same weights, so bitwise the same logits."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch

from moelab.core.errors import ConfigError
from moelab.core.types import Execution, LayerCall
from moelab.models.lookahead import Lookahead
from moelab.observers.spac_signals import SignalComparison
from moelab.predictors.mlp import LayerMlp
from moelab.scorers.mlp import MlpScorer
from moelab.scorers.router import RouterScorer
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model
from tests.test_prefetch import DEC

BATCHES = [[p] for p in random_prompts(2, 256, seed=4)]
NEW_TOKENS = 4
MODELS = {  # mixtral's router returns float32 weights whatever the model's dtype, qwen3_moe's the model's dtype
    "mixtral": tiny_hf_model("mixtral", num_hidden_layers=4, num_local_experts=8, seed=3),
    "qwen3_moe": tiny_hf_model("qwen3_moe", num_hidden_layers=4, seed=3).to(torch.bfloat16),
}


def run(arch: str, true_router: str, state: str = "post_attn", mlp: bool = False):
    """Greedy generation with speculative=predicted; returns the executor, the logits and, per MoE layer, how
    often the model itself (not a predictor scoring a quasi-hidden state) called that layer's router."""
    om = offloaded_copy(MODELS[arch])
    ex = make_executor(om, 12, prefetch="qhs", speculative="predicted", true_router=true_router)
    scorer = None
    if mlp:
        torch.manual_seed(0)
        mlps = {t: LayerMlp(om.spec.hidden_size, 16, om.spec.num_experts).to(om.dtype).eval() for t in (2, 3)}
        scorer = MlpScorer(mlps, None, RouterScorer(om))
    look = Lookahead(om, replace(ex.prefetch.lookahead, state=state), ex, scorer=scorer, predicted_logits=True,
                     skip_router=true_router == "skip")
    routers = om.routers()
    calls: Counter[int] = Counter()
    cls = type(routers[om.spec.moe_layers[0]])
    original = cls.forward

    def counting(self, *args, **kwargs):
        if not look._predicting:
            calls[next(layer for layer, r in routers.items() if r is self)] += 1
        return original(self, *args, **kwargs)

    cls.forward = counting
    try:
        with om.using(ex), look:
            out = DEC.generate(om, BATCHES, NEW_TOKENS, keep_logits=True)
    finally:
        cls.forward = original
    assert all("forward" not in r.__dict__ for r in routers.values())  # the model's routers are its own again
    return ex, torch.cat(out.logits), calls


CASES = [("mixtral", "post_attn", False), ("mixtral", "default_vectors", False), ("mixtral", "post_attn", True),
         ("qwen3_moe", "post_attn", False), ("qwen3_moe", "layer_output", True)]


@pytest.mark.parametrize("arch,state,mlp", CASES)
def test_skipping_the_router_runs_the_same_experts_with_the_same_weights(arch, state, mlp):
    computed, logits, calls = run(arch, "compute", state, mlp)
    skipped, skip_logits, skip_calls = run(arch, "skip", state, mlp)
    first, *predicted = computed.spec.moe_layers
    steps = len(BATCHES) * NEW_TOKENS  # forward steps: one prefill and NEW_TOKENS - 1 decodes per batch
    assert calls == {layer: steps for layer in computed.spec.moe_layers}
    assert skip_calls == {first: steps}  # distance 1: only the first MoE layer of a step has no prediction
    assert skip_logits.dtype == logits.dtype and torch.equal(skip_logits, logits)  # bitwise, in the model's dtype
    assert skipped.counters.routing == computed.counters.routing
    compute_row, skip_row = computed.observers.row(), skipped.observers.row()
    assert 0 < compute_row["spec_exec_changed"] <= 1 and math.isnan(skip_row["spec_exec_changed"])
    assert not math.isnan(compute_row["prediction_topk_recall"]) and math.isnan(skip_row["prediction_topk_recall"])
    assert math.isnan(skip_row["prediction_precision"]) and skip_row["prediction_recall_layers"] == "{}"
    assert skip_row["prediction_calls"] == compute_row["prediction_calls"] > 0  # known without the router


def test_skip_is_refused_without_predicted_weights():
    for mode in ("none", "router"):
        with pytest.raises(ConfigError, match=f"needs execution.speculative=predicted, got {mode}"):
            Execution(speculative=mode, true_router="skip")
    with pytest.raises(ConfigError, match="allowed: compute, skip"):
        Execution(speculative="predicted", true_router="never")


def test_signal_comparison_leaves_out_layers_whose_router_did_not_run():
    obs = SignalComparison()
    obs.reset()
    for step in (0, 1):  # two consecutive verification passes; layer 1's router was skipped in the second
        obs.on_layer(LayerCall(step, 0, "verify", 2, (1, 2, 1, 3), (1, 2, 1, 3), False))
        obs.on_layer(LayerCall(step, 1, "verify", 2, (4, 5, 4, 6) if step == 0 else None, (4, 5, 4, 6), True))
    row = obs.row()
    assert list(json.loads(row["signal_layers"])["binary_recall"]) == ["0"]  # layer 0 measured, layer 1 not
    assert all(math.isnan(v) for k, v in row.items() if k != "signal_layers") and len(row) == 7
