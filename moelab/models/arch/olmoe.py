"""OLMoE: 64 small experts, top-8, every layer MoE."""

from typing import Any

from moelab.core.registry import register
from moelab.models.adapter import MoeAdapter


@register("arch", "olmoe")
class OlmoeAdapter(MoeAdapter):
    model_type = "olmoe"

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        cfg = dict(
            hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, vocab_size=256, max_position_embeddings=512,
            eos_token_id=2, pad_token_id=1,
        )
        return {**cfg, **overrides}
