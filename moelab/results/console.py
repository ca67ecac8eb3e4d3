"""The one-screen summary printed after a run."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}{unit}" if abs(v) < 100 else f"{v:,.1f}{unit}"
    return f"{v}{unit}"


def _gib(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v / 2**30:,.3f} GiB"


def _floor(row: Mapping[str, Any]) -> str:
    """The floor and the efficiency where they are defined, else why not (the note's first words)."""
    floor = row.get("floor_ms_per_token")
    if floor is None or (isinstance(floor, float) and math.isnan(floor)):
        return f"none ({str(row.get('floor_note') or 'not measured').split(':')[0]})"
    return f"{_fmt(floor)} ({_fmt(row.get('efficiency'))})"


def print_summary(row: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 110)
    title = (
        f"{row.get('model')} [{row.get('architecture')}] on {row.get('device_name')} | "
        f"policy={row.get('policy')} prefetch={row.get('prefetch')} cache={row.get('cache')} "
        f"balancer={row.get('balancer')} | budget {row.get('budget_experts')}/{row.get('total_experts')} experts "
        f"({_fmt(row.get('budget_fraction', float('nan')) * 100 if row.get('budget_fraction') is not None else None)}%)"
    )
    t = Table(title=title, show_header=True, header_style="bold")
    for col in ("metric", "value", "metric ", "value "):
        t.add_column(col)
    left = [
        ("status", row.get("status")),
        ("TTFT", _fmt(row.get("ttft_ms"), " ms")),
        ("TPOT mean", _fmt(row.get("tpot_ms"), " ms")),
        ("TPOT p50 / p90", f"{_fmt(row.get('tpot_median_ms'))} / {_fmt(row.get('tpot_p90_ms'))} ms"),
        ("tokens/s", _fmt(row.get("tokens_per_s"))),
        ("token agreement", _fmt(row.get("token_agreement"))),
        ("ppl (delta)", f"{_fmt(row.get('ppl'))} ({_fmt(row.get('ppl_delta'))})"),
        ("path (host syncs/token)", f"{row.get('execution_path')} ({_fmt(row.get('host_syncs_per_token'))})"),
    ]
    right = [
        ("hit rate", _fmt(row.get("hit_rate"))),
        ("H2D demand / prefetch", f"{_gib(row.get('h2d_bytes_demand'))} / {_gib(row.get('h2d_bytes_prefetch'))}"),
        ("H2D wasted / prefill", f"{_gib(row.get('h2d_bytes_wasted'))} / {_gib(row.get('h2d_bytes_prefill'))}"),
        ("copy / overlap", f"{_fmt(row.get('copy_ms'), ' ms')} / {_fmt(row.get('overlap'))}"),
        ("stall (share)", f"{_fmt(row.get('stall_ms'), ' ms')} ({_fmt(row.get('stall_share'))})"),
        ("H2D GB/s (demand)", _fmt(row.get("h2d_gbps_demand"))),
        ("floor ms/token (eff.)", _floor(row)),
        ("CPU share", _fmt(row.get("cpu_share"))),
    ]
    if row.get("prediction_topk_recall") is not None and not math.isnan(row["prediction_topk_recall"]):
        left.append(("prediction recall", _fmt(row.get("prediction_topk_recall"))))
        right.append(("prefetch precision / spec. changed",
                      f"{_fmt(row.get('prefetch_precision'))} / {_fmt(row.get('spec_exec_changed'))}"))
    for (a, b), (c, d) in zip(left, right):
        t.add_row(a, str(b), c, str(d))
    console.print(t)
    if row.get("graph_note") and row.get("execution_path") == "eager" and row.get("device") == "cuda":
        console.print(f"eager path: {row['graph_note']}", style="dim")
    console.print(
        "decode-phase numbers; timings on a CPU device exercise the code but are not results"
        if row.get("device") == "cpu" else "decode-phase numbers (prefill in ttft_ms, h2d_bytes_prefill)",
        style="dim",
    )
