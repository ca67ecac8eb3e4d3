"""MoeAdapter: what moelab needs to know about one architecture family.

transformers >= 5 gives every MoE family the same shape: decoder layers whose `mlp` holds a
router (`gate` or `router`) and a fused experts module (`experts.gate_up_proj`,
`experts.down_proj`, optional biases) called as `experts(hidden, top_k_index, top_k_weights)`.
So most of the work is generic; a family adds its checkpoint key names, its layer-count
quirks and a tiny config for tests.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

from moelab.core.errors import ConfigError


class MoeAdapter:
    model_type: ClassVar[str]
    # Per-expert checkpoint keys as saved by transformers (legacy layout), after `renames`:
    # part name -> (fused tensor it belongs to, which half of its rows: 0 first, 1 second, None all).
    legacy_parts: ClassVar[dict[str, tuple[str, int | None]]] = {
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
        "down_proj": ("down_proj", None),
    }
    # Checkpoint key rewrites (regex, replacement) applied before anything else.
    renames: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Config attribute holding the number of routed experts.
    num_experts_attr: ClassVar[str] = "num_experts"

    # ---------------------------------------------------------------- config
    def set_num_layers(self, config: Any, num_layers: int) -> None:
        """Keep only the first `num_layers` decoder layers (full-width models that fit the host)."""
        if num_layers < 1:
            raise ConfigError(f"model.num_layers must be >= 1, got {num_layers}")
        config.num_hidden_layers = num_layers
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list):
            config.layer_types = layer_types[:num_layers]

    def top_k(self, config: Any) -> int:
        return int(config.num_experts_per_tok)

    def num_experts(self, config: Any) -> int:
        return int(getattr(config, self.num_experts_attr))

    def tiny_config(self, **overrides: Any) -> dict[str, Any]:
        """A few-kB config of this family for tests and the embedded default."""
        raise NotImplementedError

    # ---------------------------------------------------------------- modules
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def moe_block(self, layer: nn.Module) -> nn.Module | None:
        mlp = getattr(layer, "mlp", None)
        experts = getattr(mlp, "experts", None)
        if experts is None:
            return None
        if getattr(experts, "offloaded", False):  # already swapped for moelab's stand-in
            return mlp
        down = getattr(experts, "down_proj", None)
        if not isinstance(down, (torch.Tensor, nn.Parameter)) or down.dim() != 3:
            return None
        return mlp

    def moe_blocks(self, model: nn.Module) -> dict[int, nn.Module]:
        """Decoder layer index -> its MoE block (dense layers are skipped)."""
        out = {}
        for i, layer in enumerate(self.decoder_layers(model)):
            block = self.moe_block(layer)
            if block is not None:
                out[i] = block
        return out

    def router(self, block: nn.Module) -> nn.Module:
        """The module mapping the block's (normed) input to (logits, top-k weights, top-k indices)."""
        return block.gate if hasattr(block, "gate") else block.router

    def pre_moe_norm(self, layer: nn.Module) -> nn.Module:
        """The norm whose output is the MoE block's input (what the router sees)."""
        return layer.post_attention_layernorm

    # ---------------------------------------------------------------- checkpoints
    def rename(self, key: str) -> str:
        for pattern, repl in self.renames:
            key = re.sub(pattern, repl, key)
        return key

    _fused = re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp\.experts\.([a-z_]+)$")
    _legacy = re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp\.experts\.(\d+)\.([a-z0-9_]+)\.weight$")

    def expert_key(self, key: str) -> tuple[int, int | None, str, int | None] | None:
        """For a (renamed) checkpoint key of an expert tensor: (layer, expert or None if fused, tensor, half)."""
        m = self._fused.match(key)
        if m:
            return int(m.group(1)), None, m.group(2), None
        m = self._legacy.match(key)
        if m and m.group(3) in self.legacy_parts:
            tensor, half = self.legacy_parts[m.group(3)]
            return int(m.group(1)), int(m.group(2)), tensor, half
        return None
