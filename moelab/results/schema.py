"""The results row, declared: every column a run may write, with its type. docs/METRICS.md defines each one.

Besides these, a row carries the run's whole resolved config flattened as `cfg.<key>` columns and, with
`eval.tasks`, lm-eval's scores as `task_score.<task>.<metric>` and `task_samples.<task>` columns (PREFIXES). A
column a run writes that is not declared here is a bug (`check_row` raises), so the schema, the docs and the rows
cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class RunRow(TypedDict, total=False):
    # identity and provenance
    run_id: str
    experiment: str
    started_at: str
    status: str  # running | ok | failed | interrupted
    error: str
    traceback: str
    moelab_version: str
    torch_version: str
    transformers_version: str
    git_commit: str
    device: str
    device_name: str
    device_index: int | None  # cuda:N's N; None on a CPU
    wall_s: float
    model_loads: int
    # what ran
    policy: str
    prefetch: str
    cache: str
    balancer: str
    decoding: str
    gamma: int | None
    draft: str | None
    speculative_execution: bool
    speculative_mode: str
    eviction: str
    compute_order: str
    execution_path: str  # graph | eager (moelab.offload.graph_plan)
    graph_note: str  # why the run is eager, or why a capture failed
    decision_lag_steps: int  # steps between what a policy saw and when its decision acts
    cpu_dtype: str
    workload: str
    prompts: int
    new_tokens: int
    batch: int
    seed: int
    workload_source: str
    replay_trace: str
    replay_mapping: str | None  # how a trace of another shape maps onto the model
    trace_path: str
    budget_experts: int
    budget_gib: float
    budget_fraction: float
    budget_requested: str
    # the model
    model: str
    model_commit: str | None
    architecture: str
    layers: int
    moe_layers: int
    experts: int
    total_experts: int
    top_k: int
    dtype: str
    expert_mib: float
    experts_gib: float
    # latency
    ref_tpot_median_ms: float
    ttft_ms: float
    tpot_ms: float
    tpot_median_ms: float
    tpot_p90_ms: float
    tokens_per_s: float
    decode_tokens: float
    # transfers and the expert cache
    hit_rate: float
    prefetch_precision: float
    prefetch_recall: float
    cpu_share: float
    h2d_bytes_demand: float
    h2d_bytes_prefetch: float
    h2d_bytes_wasted: float
    h2d_bytes_prefill: float
    copy_ms: float
    overlap: float
    stall_ms: float
    stall_share: float
    compute_ms: float
    host_gap_ms: float
    h2d_gbps_demand: float
    h2d_gbps: float
    belady_bytes: float
    h2d_gbps_calibrated: float
    transfer_floor_ms_per_token: float
    compute_floor_ms_per_token: float
    compute_kernel_ms_per_token: float
    floor_ms_per_token: float
    floor_note: str
    efficiency: float
    evictions: float
    host_syncs_per_token: float  # device -> host reads per committed decode token (executor + the token read)
    graph_replays_per_token: float
    timeline_note: str  # why copy/stall timeline columns are NaN (graph path)
    cpu_ms: float
    cpu_wait_ms: float
    # predictions
    prediction_topk_recall: float
    prediction_precision: float
    prediction_calls: float
    prediction_recall_layers: str
    prediction_coverage: float
    spec_exec_changed: float
    # speculative decoding
    acceptance_rate: float
    mean_accepted_len: float
    verifications: float
    unique_experts_per_verify: float
    unique_experts_per_verify_layers: str
    signal_binary_recall: float
    signal_binary_precision: float
    signal_freq_recall: float
    signal_freq_precision: float
    signal_freq_at_k_recall: float
    signal_freq_at_k_precision: float
    signal_layers: str
    # component statistics
    balancer_calls: float
    balancer_heuristic_calls: float
    static_hot_experts: int
    static_hot_evictions: int
    # accuracy
    token_agreement: float
    ppl: float
    ppl_ref: float
    ppl_delta: float
    ppl_docs: int
    ppl_tokens_scored: int
    output_sample: str
    # task scores (eval.tasks), besides the task_score.* / task_samples.* columns
    eval_tasks: str
    lm_eval_path: str


COLUMNS: tuple[str, ...] = tuple(RunRow.__annotations__)
CONFIG_PREFIX = "cfg."
# column families whose names depend on the run: the flattened config and lm-eval's per-task scores
PREFIXES: tuple[str, ...] = (CONFIG_PREFIX, "task_score.", "task_samples.")


def undeclared(row: Mapping[str, Any]) -> list[str]:
    """Columns of `row` that the schema does not declare (the prefixed families aside)."""
    return sorted(k for k in row if k not in RunRow.__annotations__ and not k.startswith(PREFIXES))


def check_row(row: Mapping[str, Any]) -> None:
    """Raise if a run wrote a column the schema (and so docs/METRICS.md) does not know."""
    extra = undeclared(row)
    if extra:
        raise KeyError(f"results row has undeclared column(s) {', '.join(extra)}; declare them in "
                       "moelab/results/schema.py and define them in docs/METRICS.md")
