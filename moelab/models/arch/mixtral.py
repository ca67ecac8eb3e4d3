"""Mixtral (and checkpoints saved in its layout): top-2 of 8, SwiGLU experts, no shared expert."""

from typing import Any

from moelab.core.registry import register
from moelab.models.adapter import MoeAdapter

_MIXTRAL_PARTS = {"w1": ("gate_up_proj", 0), "w3": ("gate_up_proj", 1), "w2": ("down_proj", None)}


@register("arch", "mixtral")
class MixtralAdapter(MoeAdapter):
    model_type = "mixtral"
    legacy_parts = _MIXTRAL_PARTS
    renames = ((r"\.block_sparse_moe\.", ".mlp."),)

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        cfg = dict(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            num_local_experts=8, num_experts_per_tok=2, vocab_size=256, max_position_embeddings=512,
        )
        return {**cfg, **overrides}
