"""Plain data passed between the executor and the (CUDA-free) policies."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any, NamedTuple

from moelab.core.errors import ConfigError


class ExpertKey(NamedTuple):
    """One routed expert: the decoder layer index it belongs to and its index in that layer."""

    layer: int
    expert: int


# One MoE layer call of a pass: (step, layer, the experts it ran, ascending).
RoutingEntry = tuple[int, int, tuple[int, ...]]
# Every MoE layer call of a pass, in order: what the executors record (`ExecutorCounters.routing`) and what a profile
# pass hands the policies that need the future (`RunContext.future`: prefetch=oracle, cache=belady, cache=static).
RoutingLog = Sequence[RoutingEntry]


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
class LayerCall:
    """One MoE layer call as it ran: the router's choice and what was executed, per (token, k) pair, flat [T * K].
    Observers (moelab.observers) measure from it; `executed` differs from `router_choice` only under
    speculative execution. `router_choice` is None where the true router was not computed
    (`execution.true_router=skip`): what needs it cannot be measured for that call."""

    step: int
    layer: int
    phase: str  # "prefill" | "decode" | "verify"
    top_k: int
    router_choice: tuple[int, ...] | None  # [T * K]; None: the true router did not run
    executed: tuple[int, ...]  # [T * K]
    speculative: bool  # speculative execution replaced the router's choice in this call


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
    scorer: str = "router"  # a registered scorer (moelab.scorers): "router" (layer l+d's own router) | "mlp"
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


SPECULATIVE_MODES = ("none", "router", "predicted")
COMPUTE_ORDERS = ("resident_first", "router")
TRUE_ROUTER_MODES = ("compute", "skip")
GRAPH_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Execution:
    """How the executor carries out the policies' decisions (`execution.*` in the config; the defaults are
    today's rules). Each field changes reported numbers, so each is an ablation reachable from the CLI.

    `speculative`: `none` runs the router's choice (exact); `router` runs, per token, the top_k of the predicted
    experts by the true router's logits, weighted by its softmax renormalised over them; `predicted` runs the
    predicted top_k with the softmax of the predicted router logits over them, without using the true router.
    `graphs`: `auto` replays each decode step as one CUDA graph where the run allows it (a CUDA device, batch 1,
    policies that can act one step behind), else runs eagerly and says why; `on` refuses a run that cannot;
    `off` is the eager executor.
    `true_router`: `compute` runs the model's router module at every layer (under `predicted` its choice is only
    measured); `skip` (with `predicted` only) does not run it where a prediction exists: the prediction is the
    layer's routing, as in Speculating Experts' released code, and the router's cost is saved.
    """

    eviction: str = "plan_aware"  # moelab.policies.eviction
    compute_order: str = "resident_first"  # resident_first | router
    max_slot_gap: int = 8  # a grouped GEMM pays per group, empty or not: nearby slots share a call
    speculative: str = "none"
    true_router: str = "compute"
    graphs: str = "auto"  # auto | on | off: decode steps as captured CUDA graphs (moelab.offload.graph_executor)

    def __post_init__(self) -> None:
        if self.graphs not in GRAPH_MODES:
            raise ConfigError(f"unknown execution.graphs {self.graphs!r}; allowed: {', '.join(GRAPH_MODES)}")
        if self.speculative not in SPECULATIVE_MODES:
            raise ConfigError(f"unknown execution.speculative {self.speculative!r}; "
                              f"allowed: {', '.join(SPECULATIVE_MODES)}")
        if self.true_router not in TRUE_ROUTER_MODES:
            raise ConfigError(f"unknown execution.true_router {self.true_router!r}; "
                              f"allowed: {', '.join(TRUE_ROUTER_MODES)}")
        if self.true_router == "skip" and self.speculative != "predicted":
            raise ConfigError(f"execution.true_router=skip runs the prediction in place of the router: it needs "
                              f"execution.speculative=predicted, got {self.speculative}; allowed with "
                              f"speculative={self.speculative}: true_router=compute")
        if self.compute_order not in COMPUTE_ORDERS:
            raise ConfigError(f"unknown execution.compute_order {self.compute_order!r}; "
                              f"allowed: {', '.join(COMPUTE_ORDERS)}")
        if int(self.max_slot_gap) < 0:
            raise ConfigError(f"execution.max_slot_gap must be >= 0, got {self.max_slot_gap}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Execution:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"execution has no key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(cls.__dataclass_fields__)}")
        if "max_slot_gap" in cfg:
            cfg["max_slot_gap"] = int(cfg["max_slot_gap"])
        return cls(**cfg)

    @property
    def speculates(self) -> bool:
        return self.speculative != "none"
