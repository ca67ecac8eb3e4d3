"""Eviction arbitration: who decides which resident expert gives up its slot when a copy needs one.

The cache policy ranks residents by its own signal (recency, utility, a hot set); the prefetch policy's latest
plan (its last requests, by priority) says which residents it still wants. `execution.eviction` picks how the
two are combined, so the rule itself can be ablated:

- `plan_aware` (default): residents the plan does not want go first (the cache policy picks among them), then
  the one it wants least. A prefetch only takes the slot of a resident wanted less than itself and not in use
  now, else it waits: an early prefetch must not cost an extra copy later (with the oracle's plan this is
  Belady's rule with prefetching).
- `policy`: the cache policy alone picks among the residents not in use now, for demand and prefetch copies
  alike; the plan is ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from moelab.core.errors import ConfigError
from moelab.core.types import ExpertKey
from moelab.policies.base import CachePolicy


class Eviction:
    """Picks the victim for one copy that found no free slot, or None: the copy waits (or fails, on demand)."""

    def victim(
        self,
        *,
        resident: Collection[ExpertKey],
        pinned: Collection[ExpertKey],
        plan: Mapping[ExpertKey, float],
        policy: CachePolicy,
        below: float | None,
    ) -> ExpertKey | None:
        """`resident`: keys holding slots; `pinned`: in use by the running layer; `plan`: the prefetch policy's
        wanted keys by priority; `below`: a prefetch's priority, None for a demand copy."""
        raise NotImplementedError


class PlanAwareEviction(Eviction):
    def victim(self, *, resident, pinned, plan, policy, below):  # type: ignore[no-untyped-def]
        victim = policy.victim_where(lambda k: k not in plan and k not in pinned, resident)
        if victim is None and below is not None:  # a prefetch evicts only the least wanted resident
            if any(k not in plan for k in resident):  # unwanted ones exist but are in use: wait
                return None
            least = min(resident, key=plan.__getitem__)
            if least in pinned or plan[least] >= below:
                return None
            return least
        if victim is None:
            warm = [k for k in resident if k not in pinned]
            if not warm:
                return None
            victim = min(warm, key=plan.__getitem__)
        return victim


class PolicyEviction(Eviction):
    def victim(self, *, resident, pinned, plan, policy, below):  # type: ignore[no-untyped-def]
        return policy.victim_where(lambda k: k not in pinned, resident)


EVICTION_RULES: dict[str, type[Eviction]] = {"plan_aware": PlanAwareEviction, "policy": PolicyEviction}


def eviction_rule(name: str) -> Eviction:
    if name not in EVICTION_RULES:
        raise ConfigError(f"unknown execution.eviction {name!r}; allowed: {', '.join(EVICTION_RULES)}")
    return EVICTION_RULES[name]()
