"""Fiddler's rule: an expert that is not on the GPU runs on the CPU when that finishes before a fetch would."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.registry import register
from moelab.core.types import CacheView, ExpertKey, Placement
from moelab.policies.base import Balancer


@register("balancer", "cpu_cold")
class CpuColdBalancer(Balancer):
    """Per missing expert with n routed tokens: CPU if cpu_fixed_ms + cpu_ms(n) < transfer_ms + gpu_ms(n) (the
    measured cost model; the CPU path's fixed cost is counted per expert, a conservative reading of a cost paid
    once per layer call), else fetch. Resident (or in-flight) experts always run on the GPU."""

    needs_costs = True

    def assign(
        self, layer: int, experts: Sequence[int], counts: Sequence[int], cache: CacheView
    ) -> dict[int, Placement]:
        c = self.costs
        fetch = c.transfer_ms()
        return {
            e: Placement.GPU if cache.holds(ExpertKey(layer, e)) or c.cpu_fixed_ms + c.cpu_ms(n) >= fetch + c.gpu_ms(n)
            else Placement.CPU
            for e, n in zip(experts, counts)
        }
