"""From what a run recorded to its per-step table and its one results row.

Run-level numbers are over decode steps (prefill is reported apart: `ttft_ms`,
`h2d_bytes_prefill`), because decode is where offloading policies differ and where TPOT is
measured. Definitions: docs/METRICS.md. Measurements made from routing and prediction events (recall, signals,
speculative execution) are observers (moelab.observers).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from moelab.core.types import ExpertKey
from moelab.decoding.base import Generation
from moelab.metrics.belady import belady_misses
from moelab.metrics.floors import FloorResult, floor_columns
from moelab.offload.executor import ExecutorCounters
from moelab.offload.timeline import Timeline

NAN = float("nan")


def _div(a: float, b: float) -> float:
    return a / b if b else NAN


def step_table(gen: Generation, timeline: Timeline) -> pd.DataFrame:
    """One row per executor step: host time, the copy/compute timeline, hits and bytes."""
    by_step = {w.step: i for i, w in enumerate(timeline.steps)}
    summaries = timeline.step_summaries()
    uses: dict[int, Counter] = defaultdict(Counter)
    for u in timeline.uses:
        c = uses[u.step]
        c["uses"] += 1
        c["hits"] += u.hit
        c["prefetched_uses"] += u.first_prefetched_use
    copies: dict[int, Counter] = defaultdict(Counter)
    for c in timeline.copies:
        copies[c.step][f"h2d_bytes_{c.cause}"] += c.nbytes
        copies[c.step][f"copies_{c.cause}"] += 1
    rows = []
    for s in gen.steps:
        row = {
            "step": s.step, "phase": s.phase, "batch": s.batch, "rows": s.rows, "tokens": s.tokens,
            "new_tokens": s.new_tokens, "wall_ms": s.wall_ms,
        }
        if s.step in by_step:
            row.update(summaries[by_step[s.step]])
        u = uses.get(s.step, Counter())
        cp = copies.get(s.step, Counter())
        row.update(
            uses=u["uses"], hits=u["hits"], prefetched_uses=u["prefetched_uses"],
            h2d_bytes_demand=cp["h2d_bytes_demand"], h2d_bytes_prefetch=cp["h2d_bytes_prefetch"],
            copies_demand=cp["copies_demand"], copies_prefetch=cp["copies_prefetch"],
        )
        rows.append(row)
    return pd.DataFrame(rows)


def token_agreement(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> float:
    """Fraction of generated positions whose token equals the reference's at the same position."""
    same = total = 0
    for out, ref in zip(outputs, reference):
        n = max(len(out), len(ref))
        total += n
        same += sum(1 for a, b in zip(out, ref) if a == b)
    return _div(same, total)


def belady_bytes(counters: ExecutorCounters, capacity: int, expert_bytes: int, steps: set[int]) -> float:
    """Bytes any replacement must copy during `steps` for the run's routing at `capacity` slots, whatever the cache
    held when each run of consecutive `steps` began (a prefill or earlier pass may have filled it for free):
    per such run, its Belady-optimal misses from an empty cache less the slots it could have started with."""
    segments: list[list[tuple[int, ExpertKey]]] = []
    previous_in = False
    for step, layer, experts in counters.routing:
        inside = step in steps
        if inside and not previous_in:
            segments.append([])
        if inside:
            segments[-1].extend((step, ExpertKey(layer, e)) for e in experts)
        previous_in = inside
    misses = 0
    for accesses in segments:
        start = min(capacity, len({key for _, key in accesses}))  # what a free initial fill saves
        misses += max(0, sum(belady_misses(accesses, capacity).values()) - start)
    return float(misses * expert_bytes)


def run_metrics(
    gen: Generation,
    steps: pd.DataFrame,
    timeline: Timeline,
    counters: ExecutorCounters,
    transfer_counts: dict[str, int],
    capacity: int,
    expert_bytes: int,
    compute_floor: FloorResult | None = None,
    h2d_gbps_calibrated: float = NAN,
    speculative_execution: bool = False,
) -> dict[str, Any]:
    """The run's row of metrics. `compute_floor` is the plain model's decode step measured on this machine
    (moelab.metrics.floors.compute_floor), `h2d_gbps_calibrated` the copy engine's peak bandwidth
    (moelab.offload.calibrate.h2d_peak_gbps): the floors are bounds from the machine, never from the run's own
    timings (see moelab.metrics.floors)."""
    decode = steps[steps.phase != "prefill"]
    prefill = steps[steps.phase == "prefill"]
    per_token = np.asarray(gen.decode_ms_per_token(), dtype=float)
    committed = float((decode.new_tokens * decode.rows).sum()) if len(decode) else 0.0
    decode_wall = float(decode.wall_ms.sum()) if len(decode) else 0.0
    all_copies = timeline.copies
    demand = [c for c in all_copies if c.cause == "demand"]
    demand_ms = sum(c.end - c.start for c in demand)
    all_ms = sum(c.end - c.start for c in all_copies)
    bw = _div(sum(c.nbytes for c in all_copies), all_ms)  # bytes per ms over every copy of the run
    col = lambda df, name: float(df[name].sum()) if name in df and len(df) else 0.0  # noqa: E731
    optimal_bytes = belady_bytes(counters, capacity, expert_bytes, set(decode.step))
    prefetched = transfer_counts.get("prefetch", 0)
    return {
        "ttft_ms": float(np.mean(gen.ttft_ms())) if gen.ttft_ms() else NAN,
        # per committed token of one sequence: decode time over tokens committed per sequence (a speculative pass
        # that commits 4 tokens weighs 4), so tpot_ms = batch x 1000 / tokens_per_s
        "tpot_ms": _div(decode_wall, col(decode, "new_tokens")),
        "tpot_median_ms": float(np.median(per_token)) if per_token.size else NAN,
        "tpot_p90_ms": float(np.percentile(per_token, 90)) if per_token.size else NAN,
        "tokens_per_s": gen.decode_tokens_per_s(),
        "decode_tokens": committed,
        "hit_rate": _div(col(decode, "hits"), col(decode, "uses")),
        "prefetch_precision": _div(counters.prefetched_used, prefetched),
        "prefetch_recall": _div(col(decode, "prefetched_uses"), col(decode, "uses")),
        "cpu_share": _div(counters.cpu_uses, counters.cpu_uses + col(steps, "uses")),
        "h2d_bytes_demand": col(decode, "h2d_bytes_demand"),
        "h2d_bytes_prefetch": col(decode, "h2d_bytes_prefetch"),
        "h2d_bytes_wasted": float(counters.wasted_bytes),
        "h2d_bytes_prefill": col(prefill, "h2d_bytes_demand") + col(prefill, "h2d_bytes_prefetch"),
        "copy_ms": col(decode, "copy_ms"),
        "overlap": _div(col(decode, "overlap_ms"), col(decode, "copy_ms")),
        "stall_ms": col(decode, "stall_ms"),
        "stall_share": _div(col(decode, "stall_ms"), decode_wall),
        "compute_ms": col(decode, "compute_ms"),
        "host_gap_ms": col(decode, "host_gap_ms"),  # the compute stream idle while the host syncs and plans
        "h2d_gbps_demand": _div(sum(c.nbytes for c in demand), demand_ms) / 1e6,
        "h2d_gbps": bw / 1e6 if not math.isnan(bw) else NAN,
        "belady_bytes": optimal_bytes,
        **floor_columns(compute_floor, h2d_gbps_calibrated, optimal_bytes, col(decode, "rows"), committed,
                        decode_wall, counters.cpu_uses, speculative_execution),
        "evictions": float(counters.evictions),
    }


def verify_metrics(gen: Generation, counters: ExecutorCounters) -> dict[str, float | str]:
    """Distinct experts a verification pass activates per layer: the cost that grows with gamma (MoE-SpAc)."""
    verify = {s.step for s in gen.steps if s.phase == "verify"}
    per_layer: dict[int, list[int]] = defaultdict(list)
    for step, layer, experts in counters.routing:
        if step in verify:
            per_layer[layer].append(len(experts))
    means = {str(layer): float(np.mean(v)) for layer, v in sorted(per_layer.items())}
    return {
        "unique_experts_per_verify": float(np.mean(list(means.values()))) if means else NAN,
        "unique_experts_per_verify_layers": json.dumps(means),
    }
