"""DeepSeek-V2 and -V3: shared experts (resident), dense first layers, group-limited routing."""

from typing import Any

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.models.adapter import MoeAdapter


class _DeepseekAdapter(MoeAdapter):
    def set_num_layers(self, config: Any, num_layers: int) -> None:
        dense = config.first_k_dense_replace or 0
        if num_layers <= dense:
            raise ConfigError(
                f"model.num_layers={num_layers} leaves no MoE layer: the first {dense} layers of this model are dense"
            )
        super().set_num_layers(config, num_layers)

    def _tiny(self, **cfg: Any) -> dict[str, Any]:
        base = dict(
            hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1,
            num_experts_per_tok=2, first_k_dense_replace=1, n_group=2, topk_group=1, kv_lora_rank=16,
            q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, vocab_size=256,
            max_position_embeddings=512,
        )
        return {**base, **cfg}


@register("arch", "deepseek_v2")
class DeepseekV2Adapter(_DeepseekAdapter):
    model_type = "deepseek_v2"

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        return self._tiny(**{"topk_method": "group_limited_greedy", **overrides})


@register("arch", "deepseek_v3")
class DeepseekV3Adapter(_DeepseekAdapter):
    model_type = "deepseek_v3"

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        return self._tiny(**{"norm_topk_prob": True, "routed_scaling_factor": 2.5, **overrides})
