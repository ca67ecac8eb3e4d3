"""`mlp`: learned per-layer MLPs (moelab.predictors, trained with `python -m moelab.train_predictor`) for the
target layers they cover, the router (`router`) for the others."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.predictors.mlp import LayerMlp, load_predictors
from moelab.scorers.base import Scorer
from moelab.scorers.router import RouterScorer

if TYPE_CHECKING:
    from moelab.core.types import LookaheadSpec
    from moelab.models.offloaded import OffloadedModel


@register("scorer", "mlp")
class MlpScorer(Scorer):
    """MLPs for the target layers they cover (restricted to `layers` if given), `fallback` for the rest."""

    replayable = False  # it reads the model's hidden states, which say nothing under routing=replay

    def __init__(self, models: dict[int, LayerMlp], layers: tuple[int, ...] | None, fallback: Scorer):
        if layers is not None:
            missing = sorted(set(layers) - set(models))
            if missing:
                raise ConfigError(f"prefetch.layers {missing} have no trained MLP; trained target layers: "
                                  f"{sorted(models)}")
        self.models = {t: m for t, m in models.items() if layers is None or t in layers}
        self.fallback = fallback

    @classmethod
    def for_model(cls, om: OffloadedModel, spec: LookaheadSpec) -> MlpScorer:
        """The predictors saved at `spec.mlp_path`, checked against `om`'s shape; the router for other layers."""
        if spec.mlp_path is None:
            raise ConfigError("the mlp scorer needs the path of saved predictors (prefetch.path)")
        return mlp_scorer(om, spec.mlp_path, spec.mlp_layers, RouterScorer(om))

    def __call__(self, target: int, state: torch.Tensor, k: int) -> torch.Tensor:
        m = self.models.get(target)
        if m is None:
            return self.fallback(target, state, k)
        return m(state).topk(k, dim=-1).indices

    def logits(self, target: int, state: torch.Tensor) -> torch.Tensor:
        """Scores [T, E] that rank layer `target`'s experts (the MLP's, else the fallback's router logits):
        `execution.speculative=predicted` weights the predicted top_k by their softmax."""
        m = self.models.get(target)
        if m is None:
            return self.fallback.logits(target, state)
        return m(state).float()


def mlp_scorer(om: OffloadedModel, path: str, layers: tuple[int, ...] | None, fallback: Scorer) -> MlpScorer:
    """Load predictors for `om`, checking they were trained for its shape."""
    models, info = load_predictors(path, om.device, om.dtype)
    spec = om.spec
    if info["hidden_size"] != spec.hidden_size or info["num_experts"] != spec.num_experts or \
            not set(models) <= set(spec.moe_layers):
        raise ConfigError(f"the MLP predictors at {path} were trained for hidden {info['hidden_size']}, "
                          f"{info['num_experts']} experts, layers {sorted(models)}; this model has hidden "
                          f"{spec.hidden_size}, {spec.num_experts} experts, MoE layers {list(spec.moe_layers)}")
    return MlpScorer(models, layers, fallback)
