"""Offloaded inference must reproduce the plain transformers model exactly (float32, CPU): same greedy
tokens and bitwise-equal logits, at every budget from one layer's top_k to all experts, in prefill
(many tokens per layer call, more experts than slots) and in decode."""

from __future__ import annotations

import pytest
import torch

from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.models.plain import PlainModel
from tests.conftest import ARCHS, assert_exact_at_budgets, make_executor, offloaded_copy, random_prompts, tiny_hf_model

DEC = AutoregressiveDecoding()

# Per family, the routing variants worth covering: top_k 1 / 2 / 4+, 4..64 experts,
# shared experts, normalised top-k weights on/off, grouped routing.
VARIANTS: dict[str, list[dict]] = {
    "mixtral": [dict(num_local_experts=4, num_experts_per_tok=1), dict(num_local_experts=8, num_experts_per_tok=2),
                dict(num_local_experts=16, num_experts_per_tok=4)],
    "phimoe": [dict(num_local_experts=8, num_experts_per_tok=2)],
    "qwen2_moe": [dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=False),
                  dict(num_experts=64, num_experts_per_tok=8, norm_topk_prob=True, moe_intermediate_size=16)],
    "qwen3_moe": [dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=True),
                  dict(num_experts=32, num_experts_per_tok=6, norm_topk_prob=False)],
    "olmoe": [dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=False),
              dict(num_experts=64, num_experts_per_tok=8, norm_topk_prob=True, intermediate_size=16)],
    "deepseek_v2": [dict(topk_method="greedy", n_group=1, topk_group=1),
                    dict(topk_method="group_limited_greedy", n_routed_experts=16, n_group=4, topk_group=2,
                         num_experts_per_tok=4, n_shared_experts=2)],
    "deepseek_v3": [dict(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4, norm_topk_prob=True),
                    dict(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2, norm_topk_prob=False)],
    "gpt_oss": [dict(num_local_experts=8, num_experts_per_tok=2), dict(num_local_experts=16, num_experts_per_tok=4)],
}

CASES = [(arch, i, v) for arch in ARCHS for i, v in enumerate(VARIANTS[arch])]


def test_every_registered_architecture_is_covered():
    assert set(VARIANTS) == set(ARCHS)


def _budgets(spec) -> list[int]:
    total = spec.total_experts
    return sorted({spec.top_k, max(spec.top_k, total // 3), total})


@pytest.mark.parametrize("arch,variant,overrides", CASES, ids=[f"{a}-{i}" for a, i, _ in CASES])
def test_offloaded_generation_equals_plain_model(arch, variant, overrides):
    plain_model = tiny_hf_model(arch, **overrides)
    om = offloaded_copy(plain_model)
    vocab = plain_model.config.vocab_size
    batches = [[p] for p in random_prompts(3, vocab)]
    assert_exact_at_budgets(om, plain_model, batches, 6, _budgets(om.spec), arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_prefill_with_padding_equals_plain_model(arch):
    plain_model = tiny_hf_model(arch)
    om = offloaded_copy(plain_model)
    batches = [random_prompts(3, plain_model.config.vocab_size, lengths=(7, 3, 11))]
    ref = DEC.generate(PlainModel(plain_model, om.device), batches, 4, keep_logits=True)
    with om.using(make_executor(om, om.spec.top_k)):
        out = DEC.generate(om, batches, 4, keep_logits=True)
    assert out.new_tokens == ref.new_tokens
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))


def test_reference_backend_is_the_plain_model():
    """The runner's un-offloaded reference (experts resident, transformers' own kernel) is exact too."""
    plain_model = tiny_hf_model("qwen2_moe")
    om = offloaded_copy(plain_model)
    x = torch.tensor([random_prompts(1, 256)[0]])
    assert torch.equal(plain_model(x).logits, om.model(x).logits)  # om starts on its reference backend
