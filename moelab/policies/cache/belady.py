"""Belady's offline-optimal eviction: the resident expert whose next use lies furthest in the future goes.

It needs the run's routing in advance: like `prefetch=oracle` and `cache=static`, it gets it from a first,
untimed pass over the same prompts (the runner records it; without speculative execution the timed pass routes
identically). It works under any prefetch policy: the executor first evicts what the prefetcher's plan does not
want, and among those this policy picks the one needed last. With `prefetch=none` and a GPU-only balancer the
demand copies it causes are the fewest any eviction rule can achieve, given that a layer call needs all of its
experts at once (`moelab.metrics.belady` counts the same optimum offline).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence

from moelab.core.context import RunContext
from moelab.core.registry import register
from moelab.core.types import ExpertKey, RoutingEvent, RoutingLog
from moelab.policies.base import CachePolicy

NEVER = float("inf")


@register("cache", "belady")
class BeladyCache(CachePolicy):
    """Ties (e.g. experts never used again) go to the lowest (layer, expert), so the choice is deterministic."""

    needs_future = True

    def __init__(self) -> None:
        self._uses: dict[ExpertKey, list[int]] = {}  # key -> positions (layer calls) where it is used
        self._pos: dict[tuple[int, int], int] = {}  # (step, layer) -> position

    def reset(self) -> None:
        super().reset()
        self._now = -1

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        if ctx.future is not None:  # the profile pass's routing
            self._index(ctx.future)

    def _index(self, routing: RoutingLog) -> None:
        self._uses, self._pos = {}, {}
        for i, (step, layer, experts) in enumerate(routing):
            self._pos[(int(step), int(layer))] = i
            for e in experts:
                self._uses.setdefault(ExpertKey(int(layer), int(e)), []).append(i)

    def observe(self, event: RoutingEvent) -> None:
        # a call the profile does not have (it should not happen) keeps the last known position
        self._now = self._pos.get((event.step, event.layer), self._now)

    def next_use(self, key: ExpertKey) -> float:
        """Position of the key's next use after the current layer call (inf: never again). The current call's
        own experts are pinned by the executor while it runs; once it ran they are needed next only later."""
        uses = self._uses.get(key, ())
        i = bisect_right(uses, self._now)
        return uses[i] if i < len(uses) else NEVER

    def victim_where(self, allowed: Callable[[ExpertKey], bool], resident: Collection[ExpertKey]) -> ExpertKey | None:
        best, best_key = None, None
        for key in resident:
            if allowed(key):
                rank = (-self.next_use(key), key.layer, key.expert)
                if best is None or rank < best:
                    best, best_key = rank, key
        return best_key

    def victim(self, candidates: Sequence[ExpertKey]) -> ExpertKey:
        return self.victim_where(lambda k: True, candidates) or candidates[0]
