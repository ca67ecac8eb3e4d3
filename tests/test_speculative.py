"""Speculative decoding with an offloaded target: greedy acceptance reproduces the target's own greedy output
exactly (all-accepted, partly accepted and never-accepted drafts, caches cropped on rejection), sampling
acceptance keeps the target's distribution, and the runner reports acceptance and experts per verification."""

from __future__ import annotations

import copy

import pytest
import torch

from moelab.core.errors import ConfigError
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.decoding.speculative import SpeculativeDecoding
from moelab.models.plain import PlainModel
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model
from tests.test_cli import run_cli, runs

AR = AutoregressiveDecoding()


@pytest.fixture(scope="module")
def target_and_drafts(tmp_path_factory):
    """A target, and drafts that agree with it always (itself), sometimes (a mix of itself and noise), never."""
    d = tmp_path_factory.mktemp("drafts")
    model = tiny_hf_model("mixtral", num_hidden_layers=3)
    model.save_pretrained(d / "self")
    partial = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in partial.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.07 * p.abs().mean())
    partial.save_pretrained(d / "partial")
    return model, {"self": str(d / "self"), "partial": str(d / "partial"), "random": None}


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_speculative_output_is_the_targets_greedy_output(target_and_drafts, gamma):
    model, drafts = target_and_drafts
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(3, 256)]
    ref = AR.generate(PlainModel(model, om.device), batches, 13, keep_logits=True)
    rates = {}
    for name, path in drafts.items():
        sd = SpeculativeDecoding(gamma=gamma, draft={"path": path, "config": {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1}})
        ex = make_executor(om, 5)  # fewer slots than one verification needs: fetches and evictions happen
        with om.using(ex):
            out = sd.generate(om, batches, 13, keep_logits=True)
        assert out.new_tokens == ref.new_tokens, f"draft {name}, gamma {gamma}"
        assert len(out.logits) == len(ref.logits)
        for a, b in zip(ref.logits, out.logits):  # several positions per pass: equal up to float summation order
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert all(s.phase in ("prefill", "verify") for s in out.steps)
        rates[name] = sd.stats()["acceptance_rate"]
    assert rates["self"] == 1.0 and rates["random"] < 0.2
    if gamma > 1:
        assert 0.0 < rates["partial"] < 1.0  # rejections mid-proposal: both caches are cropped


def test_sampling_acceptance_keeps_the_target_distribution():
    """The second token comes out of a verification pass (accept, or resample from max(0, p - q)): over many
    seeds its frequency must match the target's own marginal sum_t1 p(t1) p(t2 | t1), whatever the draft."""
    model = tiny_hf_model("mixtral", num_hidden_layers=2, vocab_size=16)
    om = offloaded_copy(model)
    prompt, temp = [3, 5, 7], 0.7
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt])).logits[0, -1] / temp, -1)
        nxt = model(torch.tensor([[*prompt, t] for t in range(16)])).logits[:, -1]
        expected = p1 @ torch.softmax(nxt / temp, -1)
    draft = {"config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 1}}
    n = 600
    seconds = torch.zeros(16)
    for seed in range(n):
        sd = SpeculativeDecoding(gamma=2, acceptance="sampling", temperature=temp, seed=seed, draft=draft)
        with om.using(make_executor(om, 8)):
            seconds[sd.generate(om, [[prompt]], 2).new_tokens[0][1]] += 1
    assert (seconds / n - expected).abs().max() < 0.06


def test_bad_speculative_settings():
    with pytest.raises(ConfigError, match="gamma"):
        SpeculativeDecoding(gamma=0)
    with pytest.raises(ConfigError, match="allowed: greedy, sampling"):
        SpeculativeDecoding(acceptance="beam")
    with pytest.raises(ConfigError, match="draft has no key"):
        SpeculativeDecoding(draft={"pth": "x"})
    om = offloaded_copy(tiny_hf_model("mixtral"))
    sd = SpeculativeDecoding(draft={"config": {"vocab_size": 7, "hidden_size": 16, "intermediate_size": 32,
                                               "num_hidden_layers": 1, "num_attention_heads": 2}})
    with pytest.raises(ConfigError, match="vocabulary"):
        sd.generate(om, [[[1, 2]]], 2)
    with pytest.raises(ConfigError, match="batch_size=1"):
        SpeculativeDecoding().generate(om, [[[1, 2], [3, 4]]], 2)


def test_runner_reports_acceptance_and_experts_per_verification(tmp_path):
    p = run_cli(tmp_path, "decoding=speculative", "decoding.gamma=3", "experiment_name=sd")
    assert p.returncode == 0, p.stderr
    row = runs(tmp_path, "sd").iloc[0]
    assert row.status == "ok" and row.decoding == "speculative" and row.gamma == 3
    assert row.token_agreement == 1.0  # greedy speculative decoding is exact
    assert 0 <= row.acceptance_rate <= 1 and row.mean_accepted_len >= 1
    assert row.unique_experts_per_verify >= 2  # top-2 of 16 over 4 tokens


def test_the_target_step_is_a_parameter_and_a_static_cache_rolls_back(target_and_drafts):
    """The loop takes the target's forward step (moelab.decoding.steps): over a static cache, rejected positions are
    rolled back by `crop` and the greedy output is still the target's own."""
    from moelab.decoding.steps import GraphStep, static_length

    model, drafts = target_and_drafts
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256)]
    ref = AR.generate(PlainModel(model, om.device), batches, 11)
    sd = SpeculativeDecoding(gamma=3, draft={"path": drafts["partial"]})
    made = []

    def static(m, b, n):
        made.append(GraphStep(m, b, static_length(m, n)))
        return made[-1]

    with om.using(make_executor(om, 5)):
        out = sd.generate(om, batches, 11, step_factory=static)
    assert out.new_tokens == ref.new_tokens
    assert len(made) == 2 and 0.0 < sd.stats()["acceptance_rate"] < 1.0  # rejections happened: crops were needed
