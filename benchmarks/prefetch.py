"""Prediction-driven prefetch benchmark: ar_binary / qhs / qhs + speculative execution / mlp / oracle vs on-demand.

    python benchmarks/prefetch.py --ckpt checkpoints/code_moe/target      # on the GPU machine
    python benchmarks/prefetch.py --quick                                  # tiny random model, runs anywhere

Sections (rows print as they finish; the tables are printed last and written to --out):
  trained  moelab's own trained MoE (code_moe, native routing): MLP predictors are trained on a trace of
           Python-source prompts (the model's training split), then every predictor runs on the built-in
           prompts at 25% and 50% budgets: per-layer prediction recall, accuracy with speculative execution
           (token agreement, ppl delta), I/O. Its trace (with qhs predictions) drives the next section.
  replay   Mixtral-8x7B and Qwen3-30B-A3B shapes (random weights, real expert sizes) replaying the trained
           model's routing and its routers' qhs predictions: decode TPOT side by side in one process.
Every run goes through moelab.runner.run, so each is also a row of <out>/bench_prefetch/runs.parquet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLICIES: list[tuple[str, list[str]]] = [
    ("none", ["policy=on_demand"]),
    ("ar_binary", ["policy=ar_binary"]),
    ("qhs", ["policy=qhs"]),
    ("qhs+spec", ["policy=qhs", "prefetch.speculative_execution=true"]),
    ("oracle", ["policy=oracle"]),
]
RECALL_ONLY = [("qhs d=2", ["policy=qhs", "prefetch.distance=2"]),
               ("qhs layer_output", ["policy=qhs", "prefetch.state=layer_output"]),
               ("qhs default-vector", ["policy=qhs", "prefetch.state=post_attn_default"])]
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


class Bench:
    def __init__(self, out: Path, device: str, quick: bool):
        from hydra import compose, initialize_config_dir

        self.out, self.device, self.quick = out, device, quick
        self._ctx = initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None)
        self._ctx.__enter__()
        self.compose = compose
        self.rows: list[dict[str, Any]] = []

    def run(self, section: str, label: str, budget: float, overrides: list[str], **edits: Any) -> dict[str, Any]:
        from moelab.runner import run

        cfg = self.compose("config", overrides=[
            *overrides, f"budget.fraction={budget}", "experiment_name=bench_prefetch", f"results_dir={self.out}",
            "progress=false", "logger.console=false", f"device={self.device}"])
        for key, value in edits.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        t0 = time.time()
        try:
            r = run(cfg)
        except Exception as e:  # a failing configuration is a row, not the end of the benchmark
            r = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        row = {"section": section, "model": r.get("model"), "budget": budget, "policy": label,
               **{k: r.get(k) for k in METRICS if k in r}, "status": r.get("status"), "error": r.get("error"),
               "h2d_mib_demand": (r.get("h2d_bytes_demand") or 0) / 2**20,
               "h2d_mib_prefetch": (r.get("h2d_bytes_prefetch") or 0) / 2**20,
               "h2d_mib_wasted": (r.get("h2d_bytes_wasted") or 0) / 2**20,
               "prediction_recall_layers": r.get("prediction_recall_layers"), "trace_path": r.get("trace_path"),
               "wall_s": round(time.time() - t0, 1)}
        print(json.dumps({k: v for k, v in row.items() if k != "prediction_recall_layers"}, default=str), flush=True)
        self.rows.append(row)
        pd.DataFrame(self.rows).to_csv(self.out / "prefetch_benchmark_all.csv", index=False)  # kept if cut off
        return r


def section_trained(b: Bench, model: list[str], budgets: tuple[float, ...], new_tokens: int) -> str | None:
    """Predictors on the trained model; returns the evaluation trace for the replay section."""
    from moelab.predictors.mlp import save_predictors
    from moelab.predictors.train import train_predictors

    quick = b.quick
    prompts = ["def add(a, b):\n    return a + b\n"] * 4 if quick else training_prompts(24, 600)
    rec = b.run("trained", "trace (predictor training)", 0.5, [*model, "record_trace=true", "record_states=true",
                "reference=false", f"workload.max_new_tokens={8 if quick else 48}"], **{"workload.prompts": prompts})
    models, info, report = train_predictors(rec["trace_path"], progress=False, epochs=10 if quick else 60)
    path = save_predictors(b.out / "predictors_d1", models, info)
    report.to_csv(b.out / "predictor_training.csv", index=False)
    print(report.round(3).to_string(index=False), flush=True)
    policies = [*POLICIES, ("mlp", ["policy=mlp", f"prefetch.path={path}"]),
                ("mlp+spec", ["policy=mlp", f"prefetch.path={path}", "prefetch.speculative_execution=true"])]
    trace = None
    for budget in budgets:
        for label, over in policies:
            extra = ["record_trace=true"] if (label == "none" and budget == budgets[0]) else []
            r = b.run("trained", label, budget, [*model, f"workload.max_new_tokens={new_tokens}", *over, *extra])
            trace = r.get("trace_path") or trace
    for label, over in RECALL_ONLY:
        b.run("trained", label, budgets[-1], [*model, f"workload.max_new_tokens={new_tokens}", *over])
    return trace


def section_replay(b: Bench, trace: str, budgets: tuple[float, ...], models: list[tuple[str, int]]) -> None:
    for preset, layers in models:
        base = [f"model={preset}", f"model.num_layers={layers}", "routing=replay", f"routing.trace={trace}"]
        if b.quick:
            base += ["model.config.hidden_size=128", "model.config.intermediate_size=256",
                     "model.config.vocab_size=512", "++model.config.moe_intermediate_size=64",
                     "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "model.dtype=float32",
                     "model.num_layers=3"]
            base += ["model.config.head_dim=32"] if preset == "qwen3_moe" else []
        for budget in budgets:
            for label, over in POLICIES:
                b.run("replay", label, budget, [*base, *over])


def summarise(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    ok = df[df.status == "ok"].copy()
    base = ok[ok.policy == "none"].set_index(["section", "model", "budget"]).tpot_ms
    ok["vs_none"] = [t / base.get((s, m, bud), float("nan")) for s, m, bud, t in
                     zip(ok.section, ok.model, ok.budget, ok.tpot_ms)]
    return ok


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
    ap.add_argument("--ckpt", default=str(ROOT / "checkpoints" / "code_moe" / "target"))
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_prefetch"))
    ap.add_argument("--sections", default="trained,replay")
    ap.add_argument("--trace", default=None, help="replay this trace instead of the trained section's")
    ap.add_argument("--replay-models", default=",".join(f"{m}:{n}" for m, n in REPLAY_MODELS),
                    help="model presets and layer counts for the replay section")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="tiny random models (CPU smoke test)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}, torch {torch.__version__}",
          flush=True)
    b = Bench(out, device, args.quick)
    budgets = (0.25, 0.5)
    model = ["model=tiny"] if args.quick else ["model=code_moe", f"model.path={args.ckpt}"]
    sections = args.sections.split(",")
    trace = args.trace
    if "trained" in sections:
        trace = section_trained(b, model, budgets, 6 if args.quick else args.new_tokens) or trace
        if trace:
            (out / "replay_trace.txt").write_text(trace)
    if "replay" in sections and trace:
        models = [(m, int(n)) for m, n in (x.split(":") for x in args.replay_models.split(","))]
        section_replay(b, trace, budgets, models)
    df = summarise(b.rows)
    pd.DataFrame(b.rows).to_csv(out / "prefetch_benchmark_all.csv", index=False)
    df.to_csv(out / "prefetch_benchmark.csv", index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    if "trained" in sections and len(df):
        rec = trained_recall(df, out)
        rec.to_csv(out / "prediction_recall_by_layer.csv")
        print("\n== per-layer prediction_topk_recall, trained model, decode steps")
        print(rec.to_string(float_format="%.3f"))
    cols = [c for c in KEYS + METRICS if c in df]
    for section, part in df.groupby("section", sort=False):
        print(f"\n== {section}")
        print(part[cols].drop(columns="section").to_string(index=False, float_format="%.4g"))


if __name__ == "__main__":
    main()
