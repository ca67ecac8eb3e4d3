"""Router losses computed per layer.

transformers' `aux_loss` concatenates every layer's router logits before counting expert load, so it
balances expert *indices* summed over layers: one layer may starve an expert as long as another layer
feeds the same index. Models trained with it keep almost-dead experts (an offloading study then measures
a model with fewer experts than it claims). Balancing each layer on its own, plus ST-MoE's z-loss to keep
router logits small, fixes that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def load_balance(router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """Switch-Transformer balance loss per layer, averaged: E * sum_e f_e * P_e, 1.0 when uniform."""
    losses = []
    for logits in router_logits:
        probs = logits.float().softmax(-1)  # [tokens, E]
        chosen = probs.topk(top_k, dim=-1).indices  # [tokens, k]
        load = torch.zeros_like(probs).scatter_(1, chosen, 1.0).mean(0) / top_k  # [E], sums to 1
        losses.append(probs.shape[-1] * (load * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def z_loss(router_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean squared log-partition of the router logits (ST-MoE), averaged over layers."""
    return torch.stack([logits.float().logsumexp(-1).square().mean() for logits in router_logits]).mean()
