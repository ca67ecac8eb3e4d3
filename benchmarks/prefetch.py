"""Prediction-driven prefetch benchmark: ar_binary / qhs / qhs + speculative execution / mlp / oracle vs on-demand.

    python benchmarks/prefetch.py                  # on the GPU machine: the committed code_moe (checkpoints/v1)
    python benchmarks/prefetch.py --quick                                  # tiny random model, runs anywhere

Sections (rows print as they finish; the tables are printed last and written to --out):
  trained  a committed reference MoE (--ckpt, default checkpoints/v1/code_moe; native routing): MLP predictors
           are trained on a trace of Python-source prompts (the model's training split), then every predictor
           runs on the built-in prompts at 25% and 50% budgets: per-layer prediction recall, accuracy with
           speculative execution (token agreement, ppl delta), I/O. Its trace (with qhs predictions) drives the
           next section.
  replay   Mixtral-8x7B and Qwen3-30B-A3B shapes (random weights, real expert sizes) replaying the trained
           model's routing and its routers' qhs predictions (the trace the trained section recorded, else --trace,
           default: the committed checkpoints/v1/traces/<target>_ar.parquet): decode TPOT side by side in one process.
Every run goes through moelab.runner.run, so each is also a row of <out>/bench_prefetch/runs.parquet.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ROOT,
    TRACES,
    Bench,
    common_args,
    print_tables,
    quick_shapes,
    reference_args,
    target_overrides,
    trace_file,
    vs_baseline,
)

from moelab.analysis.recall import predictors  # noqa: E402

PREDICTORS = predictors()  # the one list of predictors (conf/experiment/predictor/)
POLICIES: list[tuple[str, list[str]]] = [
    ("none", ["policy=on_demand"]),
    ("ar_binary", PREDICTORS["ar_binary"]),
    ("qhs", PREDICTORS["qhs d=1"]),
    ("qhs+spec", [*PREDICTORS["qhs d=1"], "execution.speculative=router"]),
    ("oracle", PREDICTORS["oracle"]),
]
# the other predictors at one budget (recall only), and a qhs state variant that is an ablation, not a predictor
RECALL_ONLY = [*((label, ov) for label, ov in PREDICTORS.items() if label not in ("ar_binary", "qhs d=1", "oracle")),
               ("qhs post_attn_default", ["policy=qhs", "prefetch.state=post_attn_default"])]
REPLAY_MODELS = [("mixtral", 6), ("qwen3_moe", 12)]
KEYS = ["section", "model", "budget", "policy"]
METRICS = ["tpot_ms", "tpot_median_ms", "vs_none", "tokens_per_s", "hit_rate", "prediction_topk_recall",
           "prefetch_precision", "overlap", "stall_share", "h2d_mib_demand", "h2d_mib_prefetch", "h2d_mib_wasted",
           "floor_ms_per_token", "efficiency", "token_agreement", "ppl_delta", "spec_exec_changed"]


def training_prompts(n: int, chars: int) -> list[str]:
    """Snippets of the trained model's own training split (Python source), for the predictors' trace."""
    from moelab.train.corpus import list_sources, read_split

    texts = [t for _, t in read_split(list_sources(), False, 10, 4_000_000)]
    step = max(1, len(texts) // n)
    return [texts[i][:chars] for i in range(0, step * n, step) if texts[i].strip()][:n]


def section_trained(b: Bench, model: list[str], budgets: tuple[float, ...], new_tokens: int, quick: bool) -> str | None:
    """Predictors on the trained model; returns the evaluation trace for the replay section."""
    from moelab.predictors.mlp import save_predictors
    from moelab.predictors.train import train_predictors

    prompts = ["def add(a, b):\n    return a + b\n"] * 4 if quick else training_prompts(24, 600)
    rec = b.run("trained", "trace (predictor training)", 0.5, [*model, "record_trace=true", "record_states=true",
                "reference=false", f"workload.max_new_tokens={8 if quick else 48}"], **{"workload.prompts": prompts})
    models, info, report = train_predictors(rec["trace_path"], progress=False, epochs=10 if quick else 60)
    path = save_predictors(b.out / "predictors_d1", models, info)
    report.to_csv(b.out / "predictor_training.csv", index=False)
    print(report.round(3).to_string(index=False), flush=True)
    mlp = predictors(path)["mlp"]
    policies = [*POLICIES, ("mlp", mlp), ("mlp+spec", [*mlp, "execution.speculative=router"])]
    trace = None
    for budget in budgets:
        for label, over in policies:
            extra = ["record_trace=true"] if (label == "none" and budget == budgets[0]) else []
            r = b.run("trained", label, budget, [*model, f"workload.max_new_tokens={new_tokens}", *over, *extra])
            trace = r.get("trace_path") or trace
    for label, over in RECALL_ONLY:
        b.run("trained", label, budgets[-1], [*model, f"workload.max_new_tokens={new_tokens}", *over])
    return trace


def section_replay(b: Bench, trace: str, budgets: tuple[float, ...], models: list[tuple[str, int]],
                   quick: bool, only: set[str] | None = None) -> None:
    for preset, layers in models:
        base = [f"model={preset}", "model.random_init=true", f"model.num_layers={layers}", "routing=replay",
                f"routing.trace={trace}"]
        if quick:
            base += quick_shapes(preset)
        for budget in budgets:
            for label, over in POLICIES:
                if only is None or label in only:
                    b.run("replay", label, budget, [*base, *over])


def trained_recall(df: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Per-layer prediction recall of each predictor on the trained model (the paper's per-layer figure)."""
    from moelab.analysis.recall import plot_recall_by_layer, recall_by_layer

    part = df[(df.section == "trained") & (df.budget == df.budget.max()) & ~df.policy.str.endswith("+spec")
              & (df.prediction_recall_layers.fillna("{}") != "{}")]
    table = recall_by_layer(part.rename(columns={"policy": "predictor"}))
    plot_recall_by_layer(table, out / "prediction_recall_by_layer",
                         title="code_moe (trained): top-k recall of each predictor, decode steps")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reference_args(ap, traces=False)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_prefetch"))
    ap.add_argument("--sections", default="trained,replay")
    ap.add_argument("--trace", default=None, help="replay this trace instead of the trained section's (without "
                    "the trained section: default checkpoints/v1/traces/<target>_ar.parquet)")
    ap.add_argument("--replay-models", default=",".join(f"{m}:{n}" for m, n in REPLAY_MODELS),
                    help="model presets and layer counts for the replay section")
    ap.add_argument("--policies", default=None, help="comma-separated labels to run in the replay section")
    args = common_args(ap)
    device, out = args.device, args.out
    b = Bench(out, device, "bench_prefetch", METRICS)
    budgets = (0.25, 0.5)
    model = ["model=tiny"] if args.quick else target_overrides(args.ckpt)
    sections = args.sections.split(",")
    trace = args.trace or (None if "trained" in sections else str(trace_file(TRACES, args.ckpt, "ar")))
    if "trained" in sections:
        trace = section_trained(b, model, budgets, 6 if args.quick else args.new_tokens, args.quick) or trace
        if trace:  # kept beside the tables, so a later call (or another machine) can replay it
            shutil.copy(trace, out / "replay_trace.parquet")
            trace = str(out / "replay_trace.parquet")
    if "replay" in sections and trace:
        models = [(m, int(n)) for m, n in (x.split(":") for x in args.replay_models.split(","))]
        section_replay(b, trace, budgets, models, args.quick, set(args.policies.split(",")) if args.policies else None)
    df = vs_baseline(b.rows, "none")
    df.to_csv(out / "prefetch_benchmark.csv", index=False)
    if "trained" in sections and len(df):
        rec = trained_recall(df, out)
        rec.to_csv(out / "prediction_recall_by_layer.csv")
        print("\n== per-layer prediction_topk_recall, trained model, decode steps")
        print(rec.to_string(float_format="%.3f"))
    print_tables(df, KEYS, METRICS)


if __name__ == "__main__":
    main()
