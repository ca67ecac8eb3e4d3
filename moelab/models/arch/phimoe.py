"""Phi-3.5-MoE: Mixtral-like experts, sparsemixer routing, LayerNorm with biases."""

from typing import Any

from moelab.core.registry import register
from moelab.models.adapter import MoeAdapter
from moelab.models.arch.mixtral import _MIXTRAL_PARTS


@register("arch", "phimoe")
class PhimoeAdapter(MoeAdapter):
    model_type = "phimoe"
    legacy_parts = _MIXTRAL_PARTS
    renames = ((r"\.block_sparse_moe\.", ".mlp."), (r"\.mlp\.gate\.weight$", ".mlp.router.weight"))

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        cfg = dict(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            num_local_experts=8, num_experts_per_tok=2, vocab_size=256, max_position_embeddings=512,
        )
        return {**cfg, **overrides}
