"""`router`: layer l+d's own pre-MoE norm and router applied to the stand-in state (Speculating Experts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from moelab.core.registry import register
from moelab.scorers.base import Scorer

if TYPE_CHECKING:
    from moelab.core.types import LookaheadSpec
    from moelab.models.offloaded import OffloadedModel


def router_ranking(router: nn.Module, h: torch.Tensor, k: int) -> torch.Tensor:
    """Experts by the router's preference: its own top-k choice (group limits and biases included) first,
    then the others by logit."""
    logits, _, idx = router(h)
    logits = logits.float().reshape(idx.shape[0], -1)
    first = idx.gather(1, logits.gather(1, idx).argsort(dim=1, descending=True))
    rest = logits.scatter(1, idx, float("-inf")).argsort(dim=1, descending=True)[:, : logits.shape[1] - idx.shape[1]]
    return torch.cat([first, rest], dim=1)[:, :k]


@register("scorer", "router")
class RouterScorer(Scorer):
    """Layer l+d's pre-MoE norm and router applied to the stand-in state."""

    def __init__(self, om: OffloadedModel):
        self.routers = om.routers()
        self.norms = om.pre_moe_norms()

    @classmethod
    def for_model(cls, om: OffloadedModel, spec: LookaheadSpec) -> RouterScorer:
        return cls(om)

    def __call__(self, target: int, state: torch.Tensor, k: int) -> torch.Tensor:
        return router_ranking(self.routers[target], self.norms[target](state), k)

    def logits(self, target: int, state: torch.Tensor) -> torch.Tensor:
        """Layer `target`'s router logits [T, E] for the stand-in state [T, H]."""
        return self.routers[target](self.norms[target](state))[0].float().reshape(state.shape[0], -1)
