"""MoE-SpAc's heterogeneous workload balancer: per layer call, split the experts that are not on the GPU between
fetching them (then computing on the GPU) and computing them in place on the CPU, so the layer finishes
soonest under the measured cost model; the GPU and the CPU work at the same time.

The integer problem, for the missing experts i (n_i tokens routed), with G the ones fetched:
    minimise  max( T_res + sum_{i in G} (h2d + gpu(n_i)),   [any i not in G] * fixed + sum_{i not in G} cpu(n_i) )
    subject to |G| <= free slots (capacity minus this layer's resident experts)
where T_res = sum of gpu(n) of the resident ones (copies are serial on one copy stream, the compute stream
runs the experts one after another: a conservative bound of the GPU path) and `fixed` the CPU path's cost per
layer call that uses it at all (tokens down, thread hand-off, outputs up; measured). Ties go to the split that puts
the higher speculative utility on the GPU (the "cutoff line": hot experts are worth keeping), then to fewer
copies. Solved exactly by enumeration up to `exact_max` missing experts (2^14 splits, vectorised); above it
a greedy cutoff with single-swap improvement, counted in `heuristic_calls`. (MoE-SpAc's released code has no
optimiser; its residency rule is `balancer=residency`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from moelab.config_schema import NonNegative
from moelab.core.context import RunContext
from moelab.core.registry import register
from moelab.core.types import CacheView, ExpertKey, Placement
from moelab.policies.base import Balancer


@lru_cache(maxsize=32)
def _splits(m: int) -> np.ndarray:
    """Every subset of m items as rows of booleans (True = fetched)."""
    return ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(bool)


def split_cost(fetched: Sequence[bool], t_res: float, fetch: Sequence[float], cpu: Sequence[float],
               fixed: float = 0.0) -> float:
    gpu = t_res + sum(f for f, g in zip(fetch, fetched) if g)
    on_cpu = [c for c, g in zip(cpu, fetched) if not g]
    return max(gpu, (fixed if on_cpu else 0.0) + sum(on_cpu))


def best_split_exact(t_res: float, fetch: Sequence[float], cpu: Sequence[float], utility: Sequence[float],
                     max_fetch: int, fixed: float = 0.0) -> tuple[bool, ...]:
    m = len(fetch)
    bits = _splits(m)
    f, c, u = np.asarray(fetch, float), np.asarray(cpu, float), np.asarray(utility, float)
    cost = np.maximum(t_res + bits @ f, (~bits) @ c + fixed * (~bits).any(1))
    count = bits.sum(1)
    cost[count > max_fetch] = np.inf
    best = cost.min()
    near = np.flatnonzero(cost <= best + 1e-9)
    pick = near[np.lexsort((count[near], -(bits[near] @ u)))[0]]
    return tuple(bool(x) for x in bits[pick])


def best_split_greedy(t_res: float, fetch: Sequence[float], cpu: Sequence[float], utility: Sequence[float],
                      max_fetch: int, fixed: float = 0.0) -> tuple[bool, ...]:
    """Move experts to the GPU in order of CPU time saved per copy time while it lowers the makespan, then
    try single swaps."""
    m = len(fetch)
    order = sorted(range(m), key=lambda i: (-(cpu[i] / max(fetch[i], 1e-9)), -utility[i]))
    g = [False] * m
    cost = split_cost(g, t_res, fetch, cpu, fixed)
    for i in order:
        if sum(g) >= max_fetch:
            break
        g[i] = True
        new = split_cost(g, t_res, fetch, cpu, fixed)
        if new < cost:
            cost = new
        else:
            g[i] = False
    improved = True
    while improved:
        improved = False
        for i in range(m):
            for j in range(m):
                if g[i] and not g[j]:
                    g[i], g[j] = False, True
                    new = split_cost(g, t_res, fetch, cpu, fixed)
                    if new < cost - 1e-12:
                        cost, improved = new, True
                    else:
                        g[i], g[j] = True, False
    return tuple(g)


@register("balancer", "spac")
class SpacBalancer(Balancer):
    needs_costs = True

    def __init__(self, exact_max: NonNegative = 14):
        self.exact_max = int(exact_max)
        self.utility = None

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        self.utility = ctx.estimator

    def reset(self) -> None:
        super().reset()
        self.heuristic_calls = 0
        self.calls = 0

    def assign(
        self, layer: int, experts: Sequence[int], counts: Sequence[int], cache: CacheView
    ) -> dict[int, Placement]:
        c = self.costs
        out = {}
        missing, n_missing = [], []
        t_res = 0.0
        for e, n in zip(experts, counts):
            if cache.holds(ExpertKey(layer, e)):
                out[e] = Placement.GPU
                t_res += c.gpu_ms(n)
            else:
                missing.append(e)
                n_missing.append(n)
        if not missing:
            return out
        self.calls += 1
        fetch = [c.transfer_ms() + c.gpu_ms(n) for n in n_missing]
        cpu = [c.cpu_ms(n) for n in n_missing]
        util = [self.utility.utility(ExpertKey(layer, e)) if self.utility else 0.0 for e in missing]
        free = max(0, cache.capacity - (len(experts) - len(missing)))
        solve = best_split_exact if len(missing) <= self.exact_max else best_split_greedy
        self.heuristic_calls += solve is best_split_greedy
        for e, fetched in zip(missing, solve(t_res, fetch, cpu, util, free, c.cpu_fixed_ms)):
            out[e] = Placement.GPU if fetched else Placement.CPU
        return out

    def stats(self) -> dict[str, float]:
        return {"balancer_calls": float(self.calls), "balancer_heuristic_calls": float(self.heuristic_calls)}
