"""Qwen2-MoE / Qwen1.5-MoE: many small experts plus a gated shared expert that stays resident."""

from typing import Any

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.models.adapter import MoeAdapter


@register("arch", "qwen2_moe")
class Qwen2MoeAdapter(MoeAdapter):
    model_type = "qwen2_moe"

    def set_num_layers(self, config: Any, num_layers: int) -> None:
        super().set_num_layers(config, num_layers)
        config.mlp_only_layers = [i for i in (config.mlp_only_layers or []) if i < num_layers]
        if getattr(config, "max_window_layers", 0) > num_layers:
            config.max_window_layers = num_layers
        if len(config.mlp_only_layers) == num_layers:
            raise ConfigError(f"model.num_layers={num_layers} leaves no MoE layer (mlp_only_layers)")

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        cfg = dict(
            hidden_size=64, intermediate_size=96, moe_intermediate_size=48, shared_expert_intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=False, vocab_size=256, max_position_embeddings=512,
        )
        return {**cfg, **overrides}
