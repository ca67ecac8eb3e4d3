"""A training-only experts implementation: every expert on every token, combined by a dense gate matrix.

For a small MoE (16 experts of 256 x 224) the per-expert Python loop of transformers' eager path launches
hundreds of tiny kernels per layer and leaves an H100 idle; computing all experts in three large einsums
costs E/top_k times the FLOPs but runs several times faster. Outputs and gradients equal the sparse
computation (weights of unrouted experts are exactly zero; the router gets its gradient through them).
Inference never uses this: the saved model keeps transformers' default implementation.
"""

from __future__ import annotations

import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

NAME = "moelab_dense"


def dense_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    if not self.has_gate or self.has_bias or self.is_transposed or getattr(self, "has_post_expert_norm", False):
        raise NotImplementedError(f"{NAME} covers gated, bias-free, untransposed experts (Mixtral, Qwen3-MoE, OLMoE)")
    gates = torch.zeros(hidden_states.shape[0], self.num_experts, dtype=top_k_weights.dtype,
                        device=hidden_states.device).scatter(1, top_k_index, top_k_weights)
    up = torch.einsum("th,eoh->teo", hidden_states, self.gate_up_proj)
    out = torch.einsum("tei,ehi->teh", self._apply_gate(up), self.down_proj)
    return torch.einsum("teh,te->th", out, gates.to(out.dtype)).to(hidden_states.dtype)


ALL_EXPERTS_FUNCTIONS.register(NAME, dense_experts_forward)
