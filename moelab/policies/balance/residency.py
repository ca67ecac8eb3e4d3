"""Resident experts run on the GPU, every other on the CPU: never a fetch on a miss (MoE-SpAc's released code,
whose prefetcher alone decides what is on the GPU)."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.registry import register
from moelab.core.types import CacheView, ExpertKey, Placement
from moelab.policies.base import Balancer


@register("balancer", "residency")
class ResidencyBalancer(Balancer):
    def assign(
        self, layer: int, experts: Sequence[int], counts: Sequence[int], cache: CacheView
    ) -> dict[int, Placement]:
        return {e: Placement.GPU if cache.holds(ExpertKey(layer, e)) else Placement.CPU for e in experts}
