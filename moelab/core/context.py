"""What a run binds every decision component and observer to, once: plain values, no tensors."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from moelab.core.cost import CostModel
from moelab.core.types import ModelSpec, RoutingLog


@dataclass(frozen=True)
class RunContext:
    """The run as components see it. The runner builds it once the model and budget are known and binds it to
    the prefetch, cache and balancer policies and the observers (`bind(ctx)`); after a profile pass it binds
    the same context with `future` filled in. `reset()` between passes forgets history, never the context."""

    spec: ModelSpec
    capacity: int  # GPU expert slots
    costs: CostModel | None = None  # the machine's measured costs, for balancers with `needs_costs`
    # the timed pass's routing (a tuple), for policies with `needs_future` (profile pass)
    future: RoutingLog | None = None
    # estimators the prefetch policy keeps and offers to the cache and balancer that rank by them (MoE-SpAc):
    estimator: Any = None  # moelab.policies.utility.UtilityEstimator (prefetch=spac)
    engine: Any = None  # moelab.policies.spac_released.ReleasedSpacEngine (prefetch=spac_released)

    def with_future(self, routing: RoutingLog) -> RunContext:
        """This context plus the routing a profile pass recorded."""
        return replace(self, future=tuple((int(s), int(layer), tuple(int(e) for e in ex)) for s, layer, ex in routing))
