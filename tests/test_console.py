"""The console summary (moelab.results.console.print_summary) shows what a reader needs to judge a run, and only
what is defined: CPU share beside the hit rate, the execution path, acceptance for speculative decoding, task
scores (with a line on lm-eval's per-line perplexity) for eval runs, the floor and efficiency only where defined.
Rows are hand-built; the rendering is read back from a recording rich Console."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from moelab.results.console import PER_LINE_PPL, print_summary

NAN = float("nan")

BASE: dict[str, Any] = {
    "model": "tiny", "architecture": "mixtral", "device": "cpu", "device_name": "cpu (x86_64, 1 threads)",
    "policy": "lru", "prefetch": "none", "cache": "lru", "balancer": "gpu_only", "budget_experts": 8,
    "total_experts": 16, "budget_fraction": 0.5, "status": "ok", "ttft_ms": 12.5, "tpot_ms": 3.25,
    "tpot_median_ms": 3.0, "tpot_p90_ms": 4.0, "tokens_per_s": 307.7, "token_agreement": 1.0, "ppl": 250.0,
    "ppl_delta": 0.0, "execution_path": "eager", "host_syncs_per_token": 9.0, "hit_rate": 0.625, "cpu_share": 0.0,
    "h2d_bytes_demand": 2**30, "h2d_bytes_prefetch": 0.0, "h2d_bytes_wasted": 0.0, "h2d_bytes_prefill": 0.0,
    "copy_ms": 1.5, "overlap": 0.0, "stall_ms": 1.5, "stall_share": 0.46, "h2d_gbps_demand": 10.0,
    "floor_ms_per_token": NAN, "floor_note": "cpu device: host time is all there is", "efficiency": NAN,
    "decoding": "autoregressive", "gamma": None, "acceptance_rate": NAN, "mean_accepted_len": NAN,
}


def render(**changes: Any) -> str:
    console = Console(record=True, width=200, color_system=None)
    print_summary({**BASE, **changes}, console)
    return console.export_text()


def cell(text: str, label: str) -> str:
    """The value printed right of `label` (the rest of its table cell)."""
    line = next(ln for ln in text.splitlines() if label in ln)
    return line.split(label, 1)[1].split("│")[1].strip()


def test_cpu_share_sits_beside_the_hit_rate_and_the_path_is_shown():
    text = render(hit_rate=1.0, cpu_share=0.667)  # spac_released: every hit, two thirds on the CPU
    assert cell(text, "hit rate (CPU share)") == "1.000 (0.667)"
    assert cell(text, "path (host syncs/token)") == "eager (9.000)"
    assert "tiny [mixtral] on cpu" in text  # the title's architecture is text, not rich markup


def test_acceptance_only_for_speculative_runs():
    text = render(decoding="speculative", gamma=4, acceptance_rate=0.375, mean_accepted_len=2.5)
    assert cell(text, "acceptance (mean accepted len)") == "0.375 (2.500; gamma=4)"
    assert "acceptance" not in render()  # autoregressive: no acceptance row at all


def test_floor_and_efficiency_only_where_defined():
    # no floor (a CPU): the reason, never a number or an efficiency
    assert cell(render(), "floor ms/token (eff.)") == "none (cpu device)"
    assert cell(render(floor_note=""), "floor ms/token (eff.)") == "none (not measured)"
    # a floor and an efficiency
    assert cell(render(floor_ms_per_token=2.5, efficiency=0.769), "floor ms/token (eff.)") == "2.500 (0.769)"
    # a floor whose efficiency is undefined: the floor alone, no "(-)"
    assert cell(render(floor_ms_per_token=2.5, efficiency=NAN), "floor ms/token (eff.)") == "2.500"


def test_task_scores_and_the_per_line_perplexity_explained():
    text = render(**{
        "eval_tasks": "code_line_greedy,code_line_em",
        "task_score.code_line_greedy.perplexity": 5.4e7, "task_score.code_line_greedy.perplexity_stderr": NAN,
        "task_score.code_line_greedy.acc": 0.25, "task_score.code_line_greedy.acc_stderr": 0.0625,
        "task_samples.code_line_greedy": 48.0,
        "task_score.code_line_em.exact_match_strict-match": 0.125,
        "task_score.code_line_em.exact_match_stderr_strict-match": 0.05,
        "task_samples.code_line_em": 8.0,
    })
    assert "task scores (lm-eval: code_line_greedy,code_line_em)" in text
    rows = {tuple(c.strip() for c in ln.split("│")[1:-1]) for ln in text.splitlines() if ln.count("│") == 6}
    assert ("code_line_greedy", "perplexity", "5.400e+07", "-", "48") in rows
    assert ("code_line_greedy", "acc", "0.250", "0.062", "48") in rows
    assert ("code_line_em", "exact_match_strict-match", "0.125", "0.050", "8") in rows
    assert "stderr_" not in text and "acc_stderr" not in text  # stderr folded into its metric's row
    assert PER_LINE_PPL in text and "per line, not per token" in PER_LINE_PPL


def test_no_perplexity_no_explanation_and_no_tasks_no_table():
    text = render(**{"task_score.code_line_em.exact_match": 0.5, "task_samples.code_line_em": 8.0})
    assert "task scores" in text and "exact_match" in text and PER_LINE_PPL not in text
    # word/byte perplexities of rolling loglikelihood are per word / per byte: no per-line explanation
    assert PER_LINE_PPL not in render(**{"task_score.code_line_rolling.word_perplexity": 40.0})
    plain = render()
    assert "task scores" not in plain and PER_LINE_PPL not in plain
