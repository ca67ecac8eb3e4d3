"""The base every registered scorer derives from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from moelab.core.types import LookaheadSpec
    from moelab.models.offloaded import OffloadedModel


class Scorer(ABC):
    """Ranks layer `target`'s experts from a stand-in state [T, H] computed while an earlier layer runs."""

    # under routing=replay the hidden states say nothing about the replayed routing: a scorer that can stand
    # aside there (the trace's recorded predictions are used instead) says so; one that cannot is refused
    replayable: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def for_model(cls, om: OffloadedModel, spec: LookaheadSpec) -> Scorer:
        """This scorer for the model `om`, as the prefetch policy's lookahead `spec` asks."""

    @abstractmethod
    def __call__(self, target: int, state: torch.Tensor, k: int) -> torch.Tensor:
        """The `k` experts of layer `target` ranked best first for each token: [T, k]."""

    @abstractmethod
    def logits(self, target: int, state: torch.Tensor) -> torch.Tensor:
        """Scores [T, E] that rank layer `target`'s experts (`execution.speculative=predicted` weights the
        predicted top_k by their softmax)."""
