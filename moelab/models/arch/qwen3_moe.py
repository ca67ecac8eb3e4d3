"""Qwen3-MoE (e.g. Qwen3-30B-A3B): 128 small experts, top-8, normalised top-k weights."""

from typing import Any

from moelab.core.registry import register
from moelab.models.arch.qwen2_moe import Qwen2MoeAdapter


@register("arch", "qwen3_moe")
class Qwen3MoeAdapter(Qwen2MoeAdapter):
    model_type = "qwen3_moe"

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        cfg = dict(
            hidden_size=64, intermediate_size=96, moe_intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
            vocab_size=256, max_position_embeddings=512,
        )
        return {**cfg, **overrides}
