"""An unmodified HF model behind the interface the decoding loops use: the baseline to compare with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moelab.models.tokenizer import ByteTokenizer


class NoBackend:
    """Step bracketing for a model that has no executor."""

    def begin_step(self, phase: str, num_tokens: int) -> int:
        return -1

    def end_step(self) -> None:
        pass


@dataclass
class PlainModel:
    model: nn.Module
    device: torch.device
    tokenizer: Any = None
    backend: Any = None

    def __post_init__(self) -> None:
        self.backend = self.backend or NoBackend()
        self.tokenizer = self.tokenizer or ByteTokenizer(int(self.model.config.vocab_size))

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (the speculative loop builds its draft in it); right also when accelerate has
        offloaded the weights to the meta device."""
        return next(self.model.parameters()).dtype
