"""The one-screen summary printed after a run."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}{unit}" if abs(v) < 100 else f"{v:,.1f}{unit}"
    return f"{v}{unit}"


def _gib(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v / 2**30:,.3f} GiB"


def _defined(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _floor(row: Mapping[str, Any]) -> str:
    """The floor and the efficiency where they are defined, else why not (the note's first words)."""
    floor = row.get("floor_ms_per_token")
    if not _defined(floor):
        return f"none ({str(row.get('floor_note') or 'not measured').split(':')[0]})"
    eff = row.get("efficiency")
    return f"{_fmt(floor)} ({_fmt(eff)})" if _defined(eff) else _fmt(floor)


# lm-eval's `perplexity` of a loglikelihood task: exp(-mean over examples of each target's summed log-likelihood)
PER_LINE_PPL = "task perplexity is lm-eval's per line, not per token: exp(-mean summed log-likelihood of a line)"


def task_scores(row: Mapping[str, Any]) -> list[tuple[str, str, Any, Any, Any]]:
    """(task, metric, value, stderr, examples) for each `task_score.<task>.<metric>` column, stderr folded in."""
    cols = [k for k in row if k.startswith("task_score.")]
    # a stderr column is its metric's name with `_stderr` after the metric, before any filter (tasks.score_columns)
    stderr = {k.replace("_stderr", "", 1): k for k in cols if "_stderr" in k.partition(".")[2].partition(".")[2]}
    out = []
    for key in sorted(k for k in cols if k not in stderr.values()):
        task, _, metric = key.removeprefix("task_score.").partition(".")
        err = row.get(stderr[key]) if key in stderr else None
        out.append((task, metric, row[key], err, row.get(f"task_samples.{task}")))
    return out


def _is_line_perplexity(metric: str) -> bool:
    """lm-eval's `perplexity` (any filter), not the per-word or per-byte ones of rolling loglikelihood."""
    return metric == "perplexity" or metric.startswith("perplexity_")


def _score(v: Any) -> str:
    """A task score: plain for ordinary values, in scientific notation for huge or tiny ones (perplexities)."""
    if not _defined(v):
        return "-"
    return f"{v:.3e}" if isinstance(v, float) and v != 0 and not 1e-3 <= abs(v) < 1e5 else _fmt(v)


def print_summary(row: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 110)
    title = (
        f"{row.get('model')} [{row.get('architecture')}] on {row.get('device_name')} | "
        f"policy={row.get('policy')} prefetch={row.get('prefetch')} cache={row.get('cache')} "
        f"balancer={row.get('balancer')} | budget {row.get('budget_experts')}/{row.get('total_experts')} experts "
        f"({_fmt(row.get('budget_fraction', float('nan')) * 100 if row.get('budget_fraction') is not None else None)}%)"
    )
    t = Table(title=escape(title), show_header=True, header_style="bold")
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
        ("hit rate (CPU share)", f"{_fmt(row.get('hit_rate'))} ({_fmt(row.get('cpu_share'))})"),
        ("H2D demand / prefetch", f"{_gib(row.get('h2d_bytes_demand'))} / {_gib(row.get('h2d_bytes_prefetch'))}"),
        ("H2D wasted / prefill", f"{_gib(row.get('h2d_bytes_wasted'))} / {_gib(row.get('h2d_bytes_prefill'))}"),
        ("copy / overlap", f"{_fmt(row.get('copy_ms'), ' ms')} / {_fmt(row.get('overlap'))}"),
        ("stall (share)", f"{_fmt(row.get('stall_ms'), ' ms')} ({_fmt(row.get('stall_share'))})"),
        ("H2D GB/s (demand)", _fmt(row.get("h2d_gbps_demand"))),
        ("floor ms/token (eff.)", _floor(row)),
    ]
    if row.get("decoding") == "speculative" or _defined(row.get("acceptance_rate")):
        right.append(("acceptance (mean accepted len)", f"{_fmt(row.get('acceptance_rate'))} "
                      f"({_fmt(row.get('mean_accepted_len'))}; gamma={row.get('gamma')})"))
    if row.get("prediction_topk_recall") is not None and not math.isnan(row["prediction_topk_recall"]):
        left.append(("prediction recall", _fmt(row.get("prediction_topk_recall"))))
        right.append(("prefetch precision / spec. changed",
                      f"{_fmt(row.get('prefetch_precision'))} / {_fmt(row.get('spec_exec_changed'))}"))
    for i in range(max(len(left), len(right))):
        a, b = left[i] if i < len(left) else ("", "")
        c, d = right[i] if i < len(right) else ("", "")
        t.add_row(a, str(b), c, str(d))
    console.print(t)
    scores = task_scores(row)
    if scores:
        tasks = row.get("eval_tasks") or ", ".join(sorted({s[0] for s in scores}))
        ts = Table(title=escape(f"task scores (lm-eval: {tasks})"),
                   show_header=True, header_style="bold")
        for col in ("task", "metric", "value", "stderr", "examples"):
            ts.add_column(col)
        for task, metric, value, stderr, n in scores:
            examples = _fmt(int(n)) if _defined(n) else "-"
            ts.add_row(escape(task), escape(metric), _score(value), _score(stderr), examples)
        console.print(ts)
        if any(_is_line_perplexity(metric) for _, metric, *_ in scores):
            console.print(PER_LINE_PPL, style="dim")
    if row.get("graph_note") and row.get("execution_path") == "eager" and row.get("device") == "cuda":
        console.print(f"eager path: {row['graph_note']}", style="dim")
    console.print(
        "decode-phase numbers; timings on a CPU device exercise the code but are not results"
        if row.get("device") == "cpu" else "decode-phase numbers (prefill in ttft_ms, h2d_bytes_prefill)",
        style="dim",
    )
