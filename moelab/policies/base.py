"""Interfaces of the three policy kinds; the executor calls them, they never touch tensors."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.types import CacheView, ExpertKey, ModelSpec, Placement, PrefetchRequest, RoutingEvent


class PrefetchPolicy:
    """Sees every routing decision and asks for experts ahead of need."""

    def reset(self, spec: ModelSpec) -> None:
        """Forget all history; called before each run (and between runs that share a model)."""
        self.spec = spec

    def on_routing(self, event: RoutingEvent, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called once the router of `event.layer` has chosen; return requests for future layers/steps."""
        return ()

    def on_step_end(self, step: int, cache: CacheView) -> Sequence[PrefetchRequest]:
        """Called after a forward step; return requests to issue before the next step starts."""
        return ()


class CachePolicy:
    """Chooses which resident expert gives up its slot."""

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


class Balancer:
    """Decides, per needed expert, whether it runs on the GPU (cached or fetched) or on the CPU."""

    def reset(self, spec: ModelSpec) -> None:
        self.spec = spec

    def assign(
        self, layer: int, experts: Sequence[int], counts: Sequence[int], cache: CacheView
    ) -> dict[int, Placement]:
        raise NotImplementedError
