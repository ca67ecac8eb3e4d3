"""The HF model with its experts modules swapped for stand-ins that call a backend.

Everything else (attention, norms, routers, shared experts, embeddings) is the untouched HF
module on the compute device. The backend is either the OffloadExecutor or the reference
(all experts resident, computed by transformers' own experts code: the un-offloaded model).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from moelab.core.types import ModelSpec
from moelab.models.adapter import MoeAdapter
from moelab.models.plain import NoBackend
from moelab.offload.store import ExpertStore


class ExpertsBackend(Protocol):
    def run_layer(
        self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor: ...

    def begin_step(self, phase: str, num_tokens: int) -> int: ...

    def end_step(self) -> None: ...


class OffloadedExperts(nn.Module):
    """Stands where the HF experts module was; holds no weights."""

    offloaded = True

    def __init__(self, layer: int, num_experts: int, owner: OffloadedModel):
        super().__init__()
        self.layer = layer
        self.num_experts = num_experts
        object.__setattr__(self, "_owner", owner)  # not a submodule: no parameters travel with it

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        return self._owner.backend.run_layer(self.layer, hidden_states, top_k_index, top_k_weights)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, num_experts={self.num_experts}, offloaded"


class ReferenceBackend(NoBackend):
    """All experts resident on the device, run by the HF experts module's own forward."""

    def __init__(self, store: ExpertStore, hf_experts: dict[int, nn.Module], device: torch.device):
        self.store = store
        self.hf_experts = hf_experts
        self.device = device
        self._resident: dict[int, dict[str, torch.Tensor]] = {}

    def materialize(self, layers: Iterable[int] | None = None) -> None:
        """Copy every expert (of `layers`, default all) to the device once (on the CPU the store already is the
        weights)."""
        for layer in self.store.layers if layers is None else layers:
            self._weights(layer, keep=True)

    def release(self) -> None:
        self._resident.clear()

    def _weights(self, layer: int, keep: bool = False) -> dict[str, torch.Tensor]:
        if layer in self._resident:
            return self._resident[layer]
        tensors = self.store.layer_tensors(layer)
        if self.device.type != "cpu":
            tensors = {n: t.to(self.device, non_blocking=True) for n, t in tensors.items()}
        if keep:
            self._resident[layer] = tensors
        return tensors

    def run_layer(self, layer, hidden, top_k_index, top_k_weights):
        params = self._weights(layer)
        return torch.func.functional_call(self.hf_experts[layer], params, (hidden, top_k_index, top_k_weights))


@dataclass
class OffloadedModel:
    """An HF causal LM whose routed experts live in an ExpertStore."""

    model: nn.Module
    adapter: MoeAdapter
    store: ExpertStore
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    hf_experts: dict[int, nn.Module] = field(default_factory=dict)  # meta-device originals (math, flags)
    tokenizer: Any = None
    name: str = ""
    backend: Any = None

    def __post_init__(self) -> None:
        self.reference = ReferenceBackend(self.store, self.hf_experts, self.device)
        if self.backend is None:
            self.backend = self.reference

    @property
    def config(self) -> Any:
        return self.model.config

    @contextmanager
    def using(self, backend: ExpertsBackend) -> Iterator[ExpertsBackend]:
        """Route expert calls to `backend` inside the block."""
        previous = self.backend
        self.backend = backend
        try:
            yield backend
        finally:
            self.backend = previous

    def routers(self) -> dict[int, nn.Module]:
        """MoE layer index -> router module (for predictors that apply a later layer's router early)."""
        layers = self.adapter.decoder_layers(self.model)
        return {i: self.adapter.router(self.adapter.moe_block(layers[i])) for i in self.spec.moe_layers}

    def pre_moe_norms(self) -> dict[int, nn.Module]:
        layers = self.adapter.decoder_layers(self.model)
        return {i: self.adapter.pre_moe_norm(layers[i]) for i in self.spec.moe_layers}
