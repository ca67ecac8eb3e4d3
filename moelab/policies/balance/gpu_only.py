"""Every needed expert runs on the GPU, fetched if missing: the pure offloading baseline."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.registry import register
from moelab.core.types import CacheView, Placement
from moelab.policies.base import Balancer


@register("balancer", "gpu_only")
class GpuOnlyBalancer(Balancer):
    uses_cpu = False

    def assign(
        self, layer: int, experts: Sequence[int], counts: Sequence[int], cache: CacheView
    ) -> dict[int, Placement]:
        return {e: Placement.GPU for e in experts}
