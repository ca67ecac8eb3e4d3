"""Every `execution.*` decision can be flipped, and flipping it changes what it should: copies for the eviction
rule, kernel calls (not outputs) for compute order and slot-gap grouping, outputs for speculative execution."""

from __future__ import annotations

import pytest
import torch

from moelab.core.errors import ConfigError
from moelab.core.types import Execution
from moelab.models.lookahead import Lookahead
from moelab.models.plain import PlainModel
from moelab.predictors.mlp import LayerMlp
from moelab.scorers.mlp import MlpScorer
from moelab.scorers.router import RouterScorer
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model
from tests.test_prefetch import DEC, generate

MODEL = tiny_hf_model("mixtral", num_hidden_layers=4, num_local_experts=8, seed=3)
BATCHES = [[p] for p in random_prompts(2, 256, seed=4)]


class CountingKernel:
    """The real expert kernel, counting its grouped calls."""

    def __init__(self, kernel, calls: list[int]):
        self.kernel, self.calls, self.has_bias = kernel, calls, kernel.has_bias

    def __call__(self, *args):
        self.calls[0] += 1
        return self.kernel(*args)


def run(capacity: int, prefetch: str = "qhs", **execution):
    om = offloaded_copy(MODEL)
    ex = make_executor(om, capacity, prefetch=prefetch, **execution)
    calls = [0]
    ex.kernels = {layer: CountingKernel(k, calls) for layer, k in ex.kernels.items()}
    ex.reset()
    out = generate(om, ex, BATCHES, 5, keep_logits=True)
    return ex, out.new_tokens, calls[0], torch.cat(out.logits)


@pytest.fixture(scope="module")
def default():
    return run(4)


def test_the_eviction_rule_changes_the_copies(default):
    ex, tokens, _, _ = default
    plain, plain_tokens, _, _ = run(4, eviction="policy")
    assert plain.transfers.count != ex.transfers.count  # the plan no longer protects wanted residents
    assert plain.counters.evictions > ex.counters.evictions
    assert plain_tokens == tokens  # exact either way


def test_compute_order_changes_the_kernel_calls_not_the_output(default):
    ex, tokens, calls, _ = default
    routed, routed_tokens, routed_calls, _ = run(4, compute_order="router")
    assert routed_tokens == tokens and routed.transfers.count == ex.transfers.count
    assert routed_calls < calls  # resident and fetched experts of a layer share one call


def test_slot_gap_grouping_changes_the_kernel_calls_not_the_output(default):
    _, tokens, calls, _ = default
    _, split_tokens, split_calls, _ = run(4, max_slot_gap=0)
    assert split_tokens == tokens and split_calls > calls


def test_speculative_modes_run_other_experts_than_the_router():
    ref = DEC.generate(PlainModel(MODEL, MODEL.device), BATCHES, 5).new_tokens
    outs, logits = {}, {}
    for mode in ("none", "router", "predicted"):
        ex, outs[mode], _, logits[mode] = run(12, speculative=mode)
        assert (ex.observers["spec_exec"].pairs > 0) == (mode != "none")
    assert outs["none"] == ref
    assert outs["router"] != ref and outs["predicted"] != ref
    assert not torch.equal(logits["predicted"], logits["router"])  # predicted weights, not the true router's


def test_predicted_mode_runs_the_predicted_top_k_with_the_predicted_softmax():
    ex = make_executor(offloaded_copy(MODEL), 8, prefetch="qhs", speculative="predicted")
    logits = torch.tensor([[4.0, -1.0, 0.0, 3.0, -2.0, 0.0, 1.0, -3.0]])
    idx, w = ex._run_predicted([[6, 1, 3]], logits, torch.tensor([[0, 3]]), torch.tensor([[0.7, 0.2]]))
    assert idx.tolist() == [[6, 1]]  # the predictor's own top-2, whatever the true router chose
    torch.testing.assert_close(w[0], torch.softmax(torch.tensor([1.0, -1.0]), 0))
    assert ex._run_predicted(None, logits, torch.tensor([[0, 3]]), torch.tensor([[0.7, 0.2]])) is None


def test_predicted_mode_with_mlp_predictors_runs_their_top_k_weighted_by_their_scores():
    """An MLP scorer ranks and weights the layers it covers (the router the others); predicted mode uses both."""
    om = offloaded_copy(MODEL)
    torch.manual_seed(0)
    mlps = {t: LayerMlp(om.spec.hidden_size, 16, om.spec.num_experts).eval() for t in (2, 3)}
    router = RouterScorer(om)
    scorer = MlpScorer(mlps, None, router)
    h = torch.randn(3, om.spec.hidden_size)
    with torch.no_grad():
        assert torch.equal(scorer.logits(2, h), mlps[2](h)) and torch.equal(scorer.logits(1, h), router.logits(1, h))
        assert torch.equal(scorer(3, h, 2), mlps[3](h).topk(2, dim=-1).indices)
    logits = {}
    for name, mode, sc in (("mlp", "predicted", scorer), ("qhs", "predicted", None), ("mlp_router", "router", scorer)):
        ex = make_executor(om, 12, prefetch="qhs", speculative=mode)
        with om.using(ex), Lookahead(om, ex.prefetch.lookahead, ex, scorer=sc, keep_router_logits=mode == "router",
                                     predicted_logits=mode == "predicted"):
            logits[name] = torch.cat(DEC.generate(om, BATCHES, 3, keep_logits=True).logits)
        assert ex.observers["spec_exec"].pairs > 0
    assert not torch.equal(logits["mlp"], logits["qhs"])  # the MLPs chose, not the router on the quasi-hidden state
    assert not torch.equal(logits["mlp"], logits["mlp_router"])  # the MLPs' weights, not the true router's


def test_bad_execution_keys_fail_with_the_allowed_values():
    with pytest.raises(ConfigError, match="allowed: none, router, predicted"):
        Execution(speculative="maybe")
    with pytest.raises(ConfigError, match="allowed: resident_first, router"):
        Execution(compute_order="random")
    with pytest.raises(ConfigError, match="allowed: plan_aware, policy"):
        make_executor(offloaded_copy(MODEL), 4, eviction="belady")
    with pytest.raises(ConfigError, match="no key"):
        Execution.from_config({"speculative": "none", "typo": 1})
