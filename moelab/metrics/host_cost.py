"""Host-cost columns of a run, and what the graph path cannot time.

Every row says how much the host was in the loop per committed decode token: device -> host reads (the
executor's own, plus the loop's read of the chosen tokens) and CUDA-graph replays, counted by the executor,
not assumed. A step that replays as one graph has no host-visible start or end for its copies and stalls, so on
the graph path those timeline columns are NaN with the reason in `timeline_note`, never a made-up zero.
"""

from __future__ import annotations

from typing import Any

from moelab.decoding.base import Generation

NAN = float("nan")
UNTIMED_IN_GRAPHS = ("copy_ms", "overlap", "stall_ms", "stall_share", "compute_ms", "host_gap_ms", "h2d_gbps_demand",
                     "h2d_gbps")
GRAPH_TIMELINE_NOTE = "graph path: copies and stalls happen inside a captured step and have no host-visible times"


def host_cost_columns(gen: Generation, counters: Any, graph_path: bool, capture_failures: list[str]) -> dict[str, Any]:
    decode = [s for s in gen.steps if s.phase != "prefill"]
    committed = sum(s.new_tokens * s.rows for s in decode)
    per = lambda n: n / committed if committed else NAN  # noqa: E731
    out: dict[str, Any] = {
        "host_syncs_per_token": per(counters.host_reads_decode + len(decode)),  # + the loop's token read per step
        "graph_replays_per_token": per(counters.graph_replays),
        "timeline_note": "",
    }
    if graph_path:
        out.update({name: NAN for name in UNTIMED_IN_GRAPHS}, timeline_note=GRAPH_TIMELINE_NOTE)
        if capture_failures:
            out["graph_note"] = "capture failed, decode ran eagerly: " + capture_failures[0]
    return out
