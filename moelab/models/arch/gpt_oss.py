"""GPT-OSS: experts with biases, interleaved clamped SwiGLU, transposed weights; router with bias."""

from typing import Any

from moelab.core.registry import register
from moelab.models.adapter import MoeAdapter


@register("arch", "gpt_oss")
class GptOssAdapter(MoeAdapter):
    model_type = "gpt_oss"
    legacy_parts = {}  # checkpoints store fused experts only

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        cfg = dict(
            hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, num_local_experts=8, num_experts_per_tok=2, vocab_size=256, sliding_window=8,
        )
        return {**cfg, **overrides}
