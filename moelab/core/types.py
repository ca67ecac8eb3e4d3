"""Plain data passed between the executor and the (CUDA-free) policies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any, NamedTuple


class ExpertKey(NamedTuple):
    """One routed expert: the decoder layer index it belongs to and its index in that layer."""

    layer: int
    expert: int


class Placement(str, Enum):
    """Where a needed expert is computed this time."""

    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class ModelSpec:
    """What policies need to know about the model, independent of tensors."""

    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    expert_bytes: int
    hidden_size: int

    @property
    def total_experts(self) -> int:
        return len(self.moe_layers) * self.num_experts

    def next_moe_layer(self, layer: int, distance: int = 1) -> int | None:
        """The MoE layer `distance` MoE layers after `layer`, or None past the last one."""
        pos = self.moe_layers.index(layer) + distance
        return self.moe_layers[pos] if 0 <= pos < len(self.moe_layers) else None


@dataclass(frozen=True)
class RoutingEvent:
    """What the router of one MoE layer chose for the tokens of one forward step."""

    step: int
    layer: int
    phase: str  # "prefill" | "decode" | "verify"
    num_tokens: int
    experts: tuple[int, ...]  # distinct experts used, ascending
    counts: tuple[int, ...]  # tokens routed to each of `experts`


@dataclass(frozen=True)
class Prediction:
    """A predictor's guess, made while `source_layer` runs, of the experts `layer` will route to."""

    step: int
    source_layer: int
    layer: int
    phase: str
    ranked: tuple[tuple[int, ...], ...]  # per token of the step: predicted experts, most likely first

    @cached_property
    def counts(self) -> dict[int, int]:
        """Expert -> how many tokens predict it."""
        out: dict[int, int] = {}
        for row in self.ranked:
            for e in row:
                out[e] = out.get(e, 0) + 1
        return out


LOOKAHEAD_STATES = ("post_attn", "post_attn_default", "default_vectors", "layer_output")


@dataclass(frozen=True)
class LookaheadSpec:
    """What a predictor needs computed from the model's hidden states while a layer runs.

    The executor's model side (moelab.models.lookahead) turns it into hooks; the policy stays
    tensor-free and only sees the resulting `Prediction`s.
    """

    distance: int = 1  # predict the MoE layer this many MoE layers ahead
    k: int | None = None  # experts predicted per token (None: the model's top_k)
    state: str = "post_attn"  # which tensor stands in for layer l+d's input (see moelab.models.lookahead)
    scorer: str = "router"  # "router": layer l+d's own router | "mlp": learned predictors
    mlp_path: str | None = None
    mlp_layers: tuple[int, ...] | None = None  # target layers scored by the MLP (None: all it has)
    default_decay: float = 0.9  # post_attn_default / default_vectors: weight of the past in the running means
    defaults_path: str | None = None  # default_vectors: per-expert vectors from a file (fixed), not estimated


@dataclass(frozen=True)
class PrefetchRequest:
    """Ask the transfer engine to bring `key` to the GPU; higher priority is issued first."""

    key: ExpertKey
    priority: float = 0.0
    fetch: bool = True  # False: a ranking hint only (keep it rather than others), not worth a copy yet


class CacheView:
    """Read-only view of the GPU expert cache that policies decide from.

    The resident/loading sets are built on first use only, so policies that never look
    cost nothing per layer.
    """

    def __init__(
        self,
        capacity: int,
        table: Mapping[ExpertKey, Any] | None = None,
        split: Callable[[], tuple[frozenset[ExpertKey], frozenset[ExpertKey]]] | None = None,
    ):
        self.capacity = capacity
        self._table = table if table is not None else {}
        self._split = split or (lambda: (frozenset(self._table), frozenset()))

    @cached_property
    def _sets(self) -> tuple[frozenset[ExpertKey], frozenset[ExpertKey]]:
        return self._split()

    @property
    def resident(self) -> frozenset[ExpertKey]:
        """Experts whose copy has finished."""
        return self._sets[0]

    @property
    def loading(self) -> frozenset[ExpertKey]:
        """Experts holding a slot whose copy may still be in flight."""
        return self._sets[1]

    def holds(self, key: ExpertKey) -> bool:
        """Resident or on its way."""
        return key in self._table

    def __len__(self) -> int:
        return len(self._table)
