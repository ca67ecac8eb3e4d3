"""The tensors one expert is made of, shared by the CPU store and the GPU slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorSpec:
    """One per-expert tensor, in the shape the HF fused experts module stores it (without the expert dim)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class ExpertLayout:
    """All per-expert tensors of an MoE layer; every MoE layer of a model has the same layout."""

    tensors: tuple[TensorSpec, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @classmethod
    def from_module(cls, experts: torch.nn.Module, dtype: torch.dtype | None = None) -> ExpertLayout:
        """Read the layout off an HF fused experts module (its 3-D parameters, expert dim first)."""
        specs = []
        for name, p in experts.named_parameters(recurse=False):
            specs.append(TensorSpec(name, tuple(p.shape[1:]), dtype or p.dtype))
        return cls(tuple(specs))
