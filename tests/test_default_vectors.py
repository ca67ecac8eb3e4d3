"""prefetch.state=default_vectors (Speculating Experts' released quasi-hidden state): per-expert running means of
the experts' outputs, checked against the experts computed by hand; the gate-weighted sum they add changes the
predictions relative to post_attn; inference stays exact; vectors saved from a run are loaded fixed."""

from __future__ import annotations

import pytest
import torch

from moelab.core import registry
from moelab.core.errors import ConfigError
from moelab.models.lookahead import Lookahead, save_default_vectors
from moelab.models.plain import PlainModel
from tests.conftest import offloaded_copy, random_prompts, tiny_hf_model
from tests.test_prefetch import DEC, RecordingQhs, executor_with, generate


@pytest.fixture(scope="module")
def model():
    return tiny_hf_model("mixtral", num_hidden_layers=3, num_local_experts=8, seed=5)


def one_call(om, policy, x, calls: int = 1):
    ex = executor_with(om, 24, policy)
    look = Lookahead(om, policy.lookahead, ex)
    with om.using(ex), look:
        for _ in range(calls):
            ex.begin_step("prefill", x.numel())
            om.model(x)
            ex.end_step()
    return ex, look


def test_expert_vectors_are_the_mean_of_each_experts_outputs_and_weighted_by_the_gate(model):
    om = offloaded_copy(model)
    x = torch.tensor([random_prompts(1, 256, lengths=(7,))[0]])
    policy = RecordingQhs(state="default_vectors", k=3)
    _, look = one_call(om, policy, x, calls=2)  # the same input twice: call 2 predicts with call 1's vectors
    seen = {}
    block = model.model.layers[0].mlp
    hooks = [block.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0])),
             model.model.layers[0].post_attention_layernorm.register_forward_pre_hook(
                 lambda m, a: seen.setdefault("s", a[0]))]
    model(x)
    for hook in hooks:
        hook.remove()
    h = seen["x"].reshape(-1, seen["x"].shape[-1])
    _, w, idx = block.gate(h)
    d = torch.zeros(8, h.shape[-1])
    for e in range(8):
        rows = (idx == e).any(1)
        if not rows.any():
            assert not look.expert_seen[0][e]
            continue
        n = int(rows.sum())
        d[e] = block.experts(h[rows], torch.full((n, 1), e), torch.ones(n, 1)).mean(0)  # expert e alone, weight 1
    # two equal calls: the running mean of two equal means is that mean
    torch.testing.assert_close(look.expert_defaults[0], d, rtol=1e-4, atol=1e-5)
    # call 2's prediction for layer 1: its norm and router applied to s_0 + sum_k w_k d[e_k]
    nxt = model.model.layers[1]
    q = seen["s"].reshape(-1, h.shape[-1]) + (w[..., None] * d[idx]).sum(1)
    manual = torch.softmax(nxt.mlp.gate.weight @ nxt.post_attention_layernorm(q).T, dim=0).T.topk(3, dim=1).indices
    pred = [p for p in policy.seen if p.source_layer == 0][1]
    assert [list(r) for r in pred.ranked] == manual.tolist()


def test_default_vectors_change_predictions_and_stay_exact(model):
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256, seed=6)]
    ref = DEC.generate(PlainModel(model, om.device), batches, 5, keep_logits=True)
    runs = {}
    for state in ("post_attn", "default_vectors"):
        ex = executor_with(om, 6, RecordingQhs(state=state))
        out = generate(om, ex, batches, 5, keep_logits=True)
        assert out.new_tokens == ref.new_tokens
        assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))
        assert ex.transfers.count["prefetch"] > 0
        runs[state] = [p.ranked for p in ex.prefetch.seen]
    a, b = runs["post_attn"], runs["default_vectors"]
    assert len(a) == len(b)
    assert a[0] == b[0] and a[1] == b[1]  # the first prompt's prefill: no vector estimated yet, same state
    assert sum(x != y for x, y in zip(a, b)) > 0


def test_vectors_saved_from_a_run_are_loaded_fixed(model, tmp_path):
    om = offloaded_copy(model)
    x = torch.tensor([random_prompts(1, 256, lengths=(7,))[0]])
    _, look = one_call(om, RecordingQhs(state="default_vectors"), x)
    path = save_default_vectors(look, tmp_path / "dv.pt")
    policy = registry.build("prefetch", {"name": "qhs", "state": "default_vectors", "defaults_file": str(path)})
    _, fixed = one_call(om, policy, x)
    assert fixed.fixed_defaults and not fixed.expert_seen  # fixed vectors: nothing estimated
    for layer, table in look.expert_defaults.items():
        assert torch.equal(fixed.expert_defaults[layer], table)
    with pytest.raises(ConfigError, match="default_vectors"):
        registry.build("prefetch", {"name": "qhs", "state": "post_attn", "defaults_file": str(path)})
    with pytest.raises(ConfigError, match="default_decay"):
        registry.build("prefetch", {"name": "qhs", "state": "default_vectors", "default_decay": 1.0})


def test_under_predicted_weights_the_vectors_are_weighted_by_what_the_layer_runs(model):
    """The released code never computes the true router under speculative execution: layer l's default vectors
    are combined with the predicted experts and weights layer l runs, which the executor hands out unconsumed."""
    om = offloaded_copy(model)
    ex = executor_with(om, 24, RecordingQhs(state="default_vectors"), speculative="predicted")
    logits = torch.tensor([[4.0, -1.0, 0.0, 3.0, -2.0, 0.0, 1.0, -3.0]])
    ex._candidates[1], ex._predicted_logits[1] = [[6, 1, 3]], logits
    true_idx, true_w = torch.tensor([[0, 3]]), torch.tensor([[0.7, 0.3]])
    idx, w = ex.predicted_routing(1, true_idx, true_w)
    assert idx.tolist() == [[6, 1]] and torch.allclose(w, torch.softmax(torch.tensor([[1.0, -1.0]]), 1))
    assert 1 in ex._candidates and 1 in ex._predicted_logits  # still there for the layer's own run
    assert executor_with(om, 24, RecordingQhs(state="default_vectors")).predicted_routing(1, true_idx, true_w) is None
