"""Interfaces of the three policy kinds; the executor calls them, they never touch tensors."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from moelab.core.cost import CostModel
from moelab.core.types import (
    CacheView,
    ExpertKey,
    LookaheadSpec,
    ModelSpec,
    Placement,
    Prediction,
    PrefetchRequest,
    RoutingEvent,
)


class PrefetchPolicy:
    """Sees every routing decision and asks for experts ahead of need.

    What a policy requests for a layer before that layer runs is its prediction for it: it is scored against
    the router's real choice (`prediction_topk_recall`) and, under `execution.speculative`, those experts run
    instead of the router's choice.
    """

    # Predictors that read the model's hidden states say what they need computed (moelab.models.lookahead).
    lookahead: LookaheadSpec | None = None
    # Policies that must know the run's routing in advance (the oracle) get it through `set_future`.
    needs_future: bool = False

    def reset(self, spec: ModelSpec) -> None:
        """Forget all history; called before each run (and between runs that share a model)."""
        self.spec = spec

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called once the router of `event.layer` has chosen; return requests for future layers/steps."""
        return ()

    def on_prediction(self, prediction: Prediction, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called when `lookahead` has produced a prediction for a later layer."""
        return ()

    def on_step_end(self, step: int, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called after a forward step; return requests to issue before the next step starts."""
        return ()

    def set_future(self, routing: Sequence[tuple[int, int, tuple[int, ...]]]) -> None:
        """(step, layer, experts) of the whole coming run, for policies with `needs_future`."""


class CachePolicy:
    """Chooses which resident expert gives up its slot."""

    # Policies that place experts from the run's routing (a static hot set) get it through `set_future`.
    needs_future: bool = False

    def reset(self, spec: ModelSpec, capacity: int) -> None:
        self.spec = spec
        self.capacity = capacity

    def on_insert(self, key: ExpertKey) -> None:
        """`key` was given a slot (demand or prefetch)."""

    def on_access(self, key: ExpertKey) -> None:
        """`key` was used by compute."""

    def on_evict(self, key: ExpertKey) -> None:
        """`key` lost its slot."""

    def victim(self, candidates: Sequence[ExpertKey]) -> ExpertKey:
        """One of `candidates` (all resident, none needed right now) to evict."""
        raise NotImplementedError

    def victim_where(self, allowed: Callable[[ExpertKey], bool], resident: Collection[ExpertKey]) -> ExpertKey | None:
        """The victim among the `resident` experts that `allowed` accepts, or None if there is none. Policies with
        an order of their own override it to stop at the first acceptable key instead of listing them all."""
        candidates = [k for k in resident if allowed(k)]
        return self.victim(candidates) if candidates else None

    def observe(self, event: RoutingEvent) -> None:
        """Every routing event, for policies that rank by usage."""

    def share(self, prefetch: PrefetchPolicy) -> None:
        """Called once with the run's prefetch policy, for policies that read its estimator."""

    def set_future(self, routing: Sequence[tuple[int, int, tuple[int, ...]]]) -> None:
        """(step, layer, experts) of the whole coming run, for policies with `needs_future`."""

    def preload(self) -> Sequence[ExpertKey]:
        """Experts to make resident before the timed pass (not counted as its transfers); called after `reset`
        and `set_future`. Placements that are static (Fiddler's hot set) start from their state, not from cold."""
        return ()

    def stats(self) -> dict[str, int]:
        """Results-row columns about the timed pass (e.g. evictions of hot experts); none by default."""
        return {}


class Balancer:
    """Decides, per needed expert, whether it runs on the GPU (cached or fetched) or on the CPU."""

    # Balancers that compare paths get the machine's measured CostModel (moelab.calibrate) before the run.
    needs_costs: bool = False
    # Balancers that may place experts on the CPU: the CPU worker prepares its weights before the run.
    uses_cpu: bool = True

    def reset(self, spec: ModelSpec) -> None:
        self.spec = spec

    def set_costs(self, costs: CostModel) -> None:
        self.costs = costs

    def share(self, prefetch: PrefetchPolicy) -> None:
        """Called once with the run's prefetch policy, for balancers that read its estimator."""

    def assign(
        self, layer: int, experts: Sequence[int], counts: Sequence[int], cache: CacheView
    ) -> dict[int, Placement]:
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Results-row columns about the timed pass (e.g. solver counts); none by default."""
        return {}
