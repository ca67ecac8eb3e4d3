"""From what a run recorded to its per-step table and its one results row.

Run-level numbers are over decode steps (prefill is reported apart: `ttft_ms`,
`h2d_bytes_prefill`), because decode is where offloading policies differ and where TPOT is
measured. Definitions follow METRICS.md; where it leaves a choice, the docstring says it.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

from moelab.core.types import ExpertKey
from moelab.decoding.base import Generation
from moelab.metrics.belady import belady_misses
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
    """Bytes Belady-optimal replacement must copy during `steps` for the run's routing at `capacity` slots."""
    accesses = [(step, ExpertKey(layer, e)) for step, layer, experts in counters.routing for e in experts]
    misses = belady_misses(accesses, capacity)
    return float(sum(misses[s] for s in steps) * expert_bytes)


def run_metrics(
    gen: Generation,
    steps: pd.DataFrame,
    timeline: Timeline,
    counters: ExecutorCounters,
    transfer_counts: dict[str, int],
    capacity: int,
    expert_bytes: int,
    compute_floor_ms_per_token: float | None = None,
) -> dict[str, float]:
    """The run's row of metrics. `compute_floor_ms_per_token` is the un-offloaded model's TPOT when it
    was measured: the speed no offloading policy can beat, unless the run's own GPU compute was faster. The
    transfer floor is the Belady-optimal bytes for this routing and budget over the H2D bandwidth measured in
    the same run."""
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
    tpot = float(per_token.mean()) if per_token.size else NAN
    transfer_floor = 0.0 if optimal_bytes == 0 else _div(_div(optimal_bytes, bw), committed)
    # GPU compute: the compute stream's busy time in this run; with an un-offloaded run, the smaller of the two
    # (transformers' own experts path can be slower than the executor's grouped kernels: a floor must not be)
    busy = _div(col(decode, "compute_ms"), committed)
    if compute_floor_ms_per_token is None or np.isnan(compute_floor_ms_per_token):
        compute_floor_ms_per_token = busy
    elif not np.isnan(busy):
        compute_floor_ms_per_token = min(compute_floor_ms_per_token, busy)
    floor_per_token = max(transfer_floor, compute_floor_ms_per_token)
    prefetched = transfer_counts.get("prefetch", 0)
    return {
        "ttft_ms": float(np.mean(gen.ttft_ms())) if gen.ttft_ms() else NAN,
        "tpot_ms": tpot,
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
        "transfer_floor_ms_per_token": transfer_floor,
        "compute_floor_ms_per_token": compute_floor_ms_per_token,
        "floor_ms_per_token": floor_per_token,
        "efficiency": _div(floor_per_token, tpot),
        "evictions": float(counters.evictions),
    }


def prediction_metrics(counters: ExecutorCounters) -> dict[str, float | str]:
    """How well the policy's requests for a layer (its prediction) matched the router's choice, decode only.

    `prediction_topk_recall` is the mean over layers of |predicted & used| / |used| (METRICS.md);
    `prediction_precision` pools |predicted & used| / |predicted|; `prediction_coverage` is the share of
    decode layer calls that had a prediction at all (qhs has none for the first MoE layer of a step).
    Per-layer recalls go to `prediction_recall_layers` as JSON {layer: recall}.
    """
    rec = {layer: v for layer, v in sorted(counters.recall.items()) if v[1]}
    per_layer = {str(layer): v[0] / v[1] for layer, v in rec.items()}
    hits, predicted = sum(v[0] for v in rec.values()), sum(v[2] for v in rec.values())
    return {
        "prediction_topk_recall": float(np.mean(list(per_layer.values()))) if per_layer else NAN,
        "prediction_precision": _div(hits, predicted),
        "prediction_calls": float(sum(v[3] for v in rec.values())),
        "prediction_recall_layers": json.dumps(per_layer),
        "spec_exec_changed": _div(counters.spec_changed, counters.spec_pairs),
        "prediction_coverage": _div(sum(v[3] for v in rec.values()), counters.decode_layer_calls),
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


def signal_metrics(counters: ExecutorCounters) -> dict[str, float | str]:
    """MoE-SpAc's claim, measured on the same verification passes: how well each signal of pass s predicts
    the experts pass s+1 uses, per layer. `binary`: the experts of the pass's first token (what one
    autoregressive step shows); `freq`: every expert the pass activated (the frequency map's support);
    `freq_at_k`: the frequency map's top experts by token count, as many as the binary signal names
    (same prefetch budget). Recall = |signal & next| / |next|; precision = |signal & next| / |signal|.
    """
    by_layer: dict[int, list[tuple[int, tuple[int, ...], dict[int, int]]]] = defaultdict(list)
    for step, layer, first, freq in counters.signals:
        by_layer[layer].append((step, first, freq))
    sums: dict[str, list[float]] = defaultdict(list)
    per_layer: dict[str, dict[str, float]] = defaultdict(dict)
    for layer, seq in sorted(by_layer.items()):
        acc: dict[str, list[float]] = defaultdict(list)
        for (s0, first, freq), (s1, _, nxt_freq) in zip(seq, seq[1:]):
            if s1 != s0 + 1:  # a new prompt began in between
                continue
            nxt = set(nxt_freq)
            ranked = sorted(freq, key=lambda e: (-freq[e], e))
            for name, sig in (("binary", set(first)), ("freq", set(freq)), ("freq_at_k", set(ranked[: len(first)]))):
                acc[f"{name}_recall"].append(len(sig & nxt) / len(nxt))
                acc[f"{name}_precision"].append(len(sig & nxt) / len(sig))
        for name, vals in acc.items():
            per_layer[name][str(layer)] = float(np.mean(vals))
            sums[name].append(float(np.mean(vals)))
    out: dict[str, float | str] = {f"signal_{n}": float(np.mean(v)) for n, v in sums.items()}
    out["signal_layers"] = json.dumps(per_layer) if per_layer else "{}"
    return out
