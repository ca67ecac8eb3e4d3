"""Prediction-driven prefetch through the real executor: what each predictor predicts (checked against a
hand computation), that predictions change what crosses to the device, that inference stays exact unless
speculative execution is on, and what speculative execution runs instead."""

from __future__ import annotations

import pytest
import torch

from moelab.core import registry
from moelab.core.types import LookaheadSpec
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.models.lookahead import Lookahead
from moelab.models.plain import PlainModel
from moelab.policies.prefetch.qhs import QhsPrefetch
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model

DEC = AutoregressiveDecoding()


class RecordingQhs(QhsPrefetch):
    """qhs that also keeps every prediction it was shown."""

    def reset(self):
        super().reset()
        self.seen = []

    def on_prediction(self, prediction, cache):
        self.seen.append(prediction)
        return super().on_prediction(prediction, cache)


def executor_with(om, capacity, policy, **execution):
    ex = make_executor(om, capacity, **execution)
    ex.prefetch = policy
    ex.bind(ex.context)
    ex.reset()
    return ex


def generate(om, ex, batches, n, keep_logits=False, future=None):
    """Greedy generation through the executor with the policy's lookahead hooks (and an oracle's future)."""
    if ex.prefetch.needs_future:
        with om.using(ex):
            DEC.generate(om, batches, n)
        routing = list(ex.counters.routing)
        ex.reset()
        ex.bind(ex.context.with_future(routing))
    mode = ex.execution.speculative
    look = Lookahead(om, ex.prefetch.lookahead, ex, keep_router_logits=mode == "router",
                     predicted_logits=mode == "predicted") if ex.prefetch.lookahead or ex.execution.speculates else None
    with om.using(ex):
        if look is None:
            return DEC.generate(om, batches, n, keep_logits=keep_logits)
        with look:
            return DEC.generate(om, batches, n, keep_logits=keep_logits)


@pytest.mark.parametrize("state,distance", [("post_attn", 1), ("post_attn", 2), ("layer_output", 1),
                                            ("post_attn_default", 1)])
def test_qhs_applies_the_later_router_to_the_right_tensor(state, distance):
    """Hand computation: softmax(W_{l+d} . norm_{l+d}(h)) top-k, where h is the tensor `state` names."""
    model = tiny_hf_model("mixtral", num_hidden_layers=4, num_local_experts=8)
    om = offloaded_copy(model)
    x = torch.tensor([random_prompts(1, 256, lengths=(9,))[0]])
    layers = model.model.layers
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output=None):
            if output is not None:
                seen[name] = output[0] if isinstance(output, tuple) else output
            else:
                seen[name] = args[0]
        return hook

    hooks = [layers[0].post_attention_layernorm.register_forward_pre_hook(keep("mid")),
             layers[0].register_forward_hook(keep("out"))]
    model(x)
    for h in hooks:
        h.remove()
    policy = RecordingQhs(distance=distance, k=3, state=state)
    ex = executor_with(om, 32, policy)
    with om.using(ex), Lookahead(om, policy.lookahead, ex):
        ex.begin_step("prefill", x.numel())
        om.model(x)
        ex.end_step()
    target = layers[distance]
    h = seen["out" if state == "layer_output" else "mid"][0]  # post_attn_default: no running mean on a first call
    probs = torch.softmax(target.mlp.gate.weight @ target.post_attention_layernorm(h).T, dim=0).T
    manual = probs.topk(3, dim=1).indices.tolist()
    pred = next(p for p in policy.seen if p.source_layer == 0)
    assert pred.layer == distance
    assert [list(r) for r in pred.ranked] == manual


def test_default_vector_is_added_from_the_second_call_on():
    model = tiny_hf_model("mixtral", num_hidden_layers=2, num_local_experts=8)
    om = offloaded_copy(model)
    policy = RecordingQhs(state="post_attn_default")
    ex = executor_with(om, 16, policy)
    x = torch.tensor([random_prompts(1, 256, lengths=(5,))[0]])
    look = Lookahead(om, policy.lookahead, ex)
    with om.using(ex), look:
        ex.begin_step("prefill", 5)
        om.model(x)
        ex.end_step()
    # after one call the running mean is exactly the mean of layer 0's MoE-block output over its tokens
    got = {}

    def keep(module, args, output):
        got["y"] = output

    hook = model.model.layers[0].mlp.register_forward_hook(keep)
    model(x)
    hook.remove()
    torch.testing.assert_close(look.defaults[0], got["y"].reshape(-1, got["y"].shape[-1]).float().mean(0))


BUDGETS = (2, 7, 32)  # one layer's top_k, a few, all 4 layers x 8 experts
POLICIES = [
    ("ar_binary", {}), ("ar_binary", {"decay": 0.5, "n": 3}), ("qhs", {}), ("qhs", {"distance": 2, "k": 4}),
    ("qhs", {"state": "layer_output"}), ("qhs", {"state": "post_attn_default"}), ("oracle", {}),
]


@pytest.mark.parametrize("name,params", POLICIES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(POLICIES)])
def test_every_policy_keeps_inference_exact(name, params):
    """With speculative execution off, prefetching changes only what is copied when, never the output."""
    model = tiny_hf_model("mixtral", num_hidden_layers=4, num_local_experts=8)
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256)]
    ref = DEC.generate(PlainModel(model, om.device), batches, 5, keep_logits=True)
    for capacity in BUDGETS:
        ex = executor_with(om, capacity, registry.build("prefetch", {"name": name, **params}))
        out = generate(om, ex, batches, 5, keep_logits=True)
        assert out.new_tokens == ref.new_tokens, f"{name} capacity {capacity}"
        assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits)), f"{name} capacity {capacity}"
        if capacity < 32:
            assert ex.transfers.count["prefetch"] > 0, f"{name} never prefetched"


def _io(name, capacity=12, **params):
    model = tiny_hf_model("mixtral", num_hidden_layers=4, num_local_experts=8, seed=3)
    om = offloaded_copy(model)
    ex = executor_with(om, capacity, registry.build("prefetch", {"name": name, **params}))
    gen = generate(om, ex, [[p] for p in random_prompts(3, 256, seed=4)], 8)
    return ex, gen


def _decode_demand_copies(ex, gen):
    ex.finish()
    decode_steps = {s.step for s in gen.steps if s.phase == "decode"}
    return sum(1 for c in ex.recorder.timeline.copies if c.cause == "demand" and c.step in decode_steps)


def test_predictions_cut_demand_fetches():
    base = _decode_demand_copies(*_io("none"))
    assert base > 0
    assert _decode_demand_copies(*_io("qhs")) < base
    assert _decode_demand_copies(*_io("oracle")) < base


def test_oracle_with_room_for_one_step_never_fetches_on_demand_after_warm_up():
    # 4 layers x top-2: one decode step uses at most 8 experts; the oracle brings each before it is needed
    ex, gen = _io("oracle", capacity=8)
    assert _decode_demand_copies(ex, gen) == 0
    assert ex.transfers.count["prefetch"] > 0


def test_prediction_recall_is_measured_per_layer():
    ex, _ = _io("oracle", capacity=32)
    recall = ex.observers["prediction_recall"].recall
    assert recall and all(v[0] == v[1] for v in recall.values())  # the oracle is right
    ex, _ = _io("qhs", capacity=32)
    recall = ex.observers["prediction_recall"].recall
    assert 0 not in recall  # nothing predicts the first MoE layer of a step
    assert all(0 <= v[0] <= v[1] for v in recall.values())


def test_speculative_execution_runs_the_best_predicted_experts_with_renormalised_weights():
    """Candidates {1, 3, 6} for a token the router sends to (0, 3): the router's two best of the candidates
    run, weighted by its softmax over them, scaled to the mass of its own top-k weights."""
    model = tiny_hf_model("mixtral", num_hidden_layers=2, num_local_experts=8)
    om = offloaded_copy(model)
    ex = executor_with(om, 8, QhsPrefetch(k=3), speculative="router")
    logits = torch.tensor([[4.0, -1.0, 0.0, 3.0, -2.0, 0.0, 1.0, -3.0]])
    ex.router_logits[1] = logits
    ex._candidates[1] = [[1, 3, 6]]
    idx, w = ex._speculate(1, torch.tensor([[0, 3]]), torch.tensor([[0.7, 0.2]]), None)
    assert idx.tolist() == [[3, 6]]
    expected = torch.softmax(torch.tensor([3.0, 1.0]), 0) * 0.9
    torch.testing.assert_close(w[0], expected)
    # fewer candidates than top_k: the router's own choice completes them
    ex._candidates[1] = [[6]]
    ex.router_logits[1] = logits
    idx, _ = ex._speculate(1, torch.tensor([[0, 3]]), torch.tensor([[0.7, 0.2]]), None)
    assert idx.tolist() == [[6, 0]]


def test_speculative_execution_avoids_fetches_and_changes_the_output():
    model = tiny_hf_model("mixtral", num_hidden_layers=4, num_local_experts=8, seed=3)
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(3, 256, seed=4)]
    ref = DEC.generate(PlainModel(model, om.device), batches, 8)
    exact = executor_with(om, 12, QhsPrefetch())
    generate(om, exact, batches, 8)
    spec = executor_with(om, 12, QhsPrefetch(), speculative="router")
    out = generate(om, spec, batches, 8)
    changes = spec.observers["spec_exec"]
    assert changes.pairs > 0 and changes.changed > 0
    assert spec.transfers.count["demand"] < exact.transfers.count["demand"]
    assert out.new_tokens != ref.new_tokens  # it runs other experts: no longer the model's own output


def test_lookahead_refuses_bad_settings():
    om = offloaded_copy(tiny_hf_model("mixtral", num_hidden_layers=2))
    ex = make_executor(om, 4)
    with pytest.raises(Exception, match="distance"):
        Lookahead(om, LookaheadSpec(distance=0), ex)
    with pytest.raises(Exception, match="k=99"):
        Lookahead(om, LookaheadSpec(k=99), ex)
