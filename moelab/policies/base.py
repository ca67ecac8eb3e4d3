"""Interfaces of the three policy kinds; the executor calls them, they never touch tensors."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from moelab.core.context import RunContext
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
    # Policies that must know the run's routing in advance (the oracle): the runner profiles it and binds a
    # context whose `future` holds it.
    needs_future: bool = False
    # False for a policy that never asks for anything ahead of need: there is nothing to speculate on
    # (`execution.speculative` refuses it) and nothing to score.
    predicts: bool = True
    # Estimators this policy keeps and offers to the run's cache and balancer (through the run context).
    estimator: Any = None
    engine: Any = None
    spec: ModelSpec

    def bind(self, ctx: RunContext) -> None:
        """Take the run's context (model, capacity, costs, future routing, shared estimators); called once the
        model is known, and again with `future` after a profile pass. State that depends on it is set here."""
        self.context = ctx
        self.spec = ctx.spec

    def reset(self) -> None:
        """Forget all history; called before each pass (and between runs that share a model)."""

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called once the router of `event.layer` has chosen; return requests for future layers/steps."""
        return ()

    def on_prediction(self, prediction: Prediction, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called when `lookahead` has produced a prediction for a later layer."""
        return ()

    def on_step_end(self, step: int, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called after a forward step; return requests to issue before the next step starts."""
        return ()




def run_context(spec: ModelSpec, capacity: int, prefetch: PrefetchPolicy, costs: CostModel | None = None
                ) -> RunContext:
    """The context of a run with these policies: the prefetch policy's estimators are shared with the others."""
    return RunContext(spec, capacity, costs, estimator=prefetch.estimator, engine=prefetch.engine)


class CachePolicy:
    """Chooses which resident expert gives up its slot."""

    # Policies that place experts from the run's routing (a static hot set) read the context's `future`.
    needs_future: bool = False
    spec: ModelSpec
    capacity: int

    def bind(self, ctx: RunContext) -> None:
        """Take the run's context; parameters that depend on the model or the budget are checked here."""
        self.context = ctx
        self.spec = ctx.spec
        self.capacity = ctx.capacity

    def reset(self) -> None:
        """Forget all history; called before each pass."""

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

    def preload(self) -> Sequence[ExpertKey]:
        """Experts to make resident before the timed pass (not counted as its transfers); called after `reset`
        and the profile pass's `bind`. Placements that are static (Fiddler's hot set) start from their state, not
        from cold."""
        return ()

    def stats(self) -> dict[str, int]:
        """Results-row columns about the timed pass (e.g. evictions of hot experts); none by default."""
        return {}


class Balancer:
    """Decides, per needed expert, whether it runs on the GPU (cached or fetched) or on the CPU."""

    # Balancers that compare paths get the machine's measured CostModel (moelab.calibrate) in the run context.
    needs_costs: bool = False
    # Balancers that may place experts on the CPU: the CPU worker prepares its weights before the run.
    uses_cpu: bool = True
    spec: ModelSpec
    costs: CostModel  # set by `bind` when the context has them

    def bind(self, ctx: RunContext) -> None:
        """Take the run's context (its `costs` are measured only for balancers with `needs_costs`)."""
        self.context = ctx
        self.spec = ctx.spec
        if ctx.costs is not None:
            self.costs = ctx.costs

    def reset(self) -> None:
        """Forget all history; called before each pass."""

    def assign(
        self, layer: int, experts: Sequence[int], counts: Sequence[int], cache: CacheView
    ) -> dict[int, Placement]:
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Results-row columns about the timed pass (e.g. solver counts); none by default."""
        return {}
