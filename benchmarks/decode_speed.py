"""Decode speed: moelab's graph and eager executors against the plain model on one machine, and exactness on it.

    python benchmarks/decode_speed.py exactness                      # GPU: greedy tokens, graph path vs plain model
    python benchmarks/decode_speed.py speed --shape qwen3 --layers 24 # GPU: one shape per process (< 10 minutes)
    python benchmarks/decode_speed.py speed --quick                   # CPU smoke test at tiny shapes

`speed` runs the real runner (`moelab.runner.run`, the same assembly as `python run.py`) on full-size random
weights with the trained models' routing replayed (`routing=replay`: code_moe_fine's trace for Qwen3/OLMoE shapes,
code_moe's for Mixtral), in interleaved rounds in one process: moelab graph on_demand at 100/50/25/12.5% of the
experts, moelab eager on_demand at 100% and 25%, the eager policies (qhs, oracle, Fiddler) at 25%, and native
routing at 100% on both paths. Every row carries the plain model's graph-captured step (`compute_floor_ms_per_token`)
and kernel time, and the first row the plain model's eager `generate` (`ref_tpot_median_ms`).

`exactness` decodes 200+ tokens greedily through the graph path at budgets from the minimum (top_k slots) to all
experts, for several architectures (Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE and DeepSeek-V2 at full width with few
layers, random weights; with --trained also the trained code_moe and code_moe_fine), and compares them with the
plain model's own tokens (eager, dynamic cache) and with the plain model's graph-captured step over the same static
cache.

Raw rows are appended to `benchmarks/results/decode_speed.parquet` / `exactness.parquet` with the device, the
commit, the date and the command; the table is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # preset, trace of the trained model whose routing is replayed
    "qwen3": ("qwen3_moe", "code_moe_fine"),
    "olmoe": ("olmoe", "code_moe_fine"),
    "mixtral": ("mixtral", "code_moe"),
}
COLUMNS = ["label", "round", "execution_path", "budget_fraction", "tpot_median_ms", "tpot_ms", "tokens_per_s",
           "hit_rate", "compute_floor_ms_per_token", "compute_kernel_ms_per_token", "transfer_floor_ms_per_token",
           "floor_ms_per_token", "efficiency", "host_syncs_per_token", "graph_replays_per_token", "ref_tpot_median_ms",
           "status"]


def provenance() -> dict[str, Any]:
    import torch

    # the device's copy of the tree may not know its commit: the caller passes it (MOELAB_COMMIT=$(git rev-parse HEAD))
    commit = os.environ.get("MOELAB_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"bench_commit": commit or "unknown", "bench_date": dt.datetime.now(dt.timezone.utc).isoformat(),
            "bench_command": " ".join([Path(sys.executable).name, *sys.argv]),
            "bench_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    import moelab  # noqa: F401  (registers the `${moelab.trace:...}` resolver)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


def speed_points(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    preset, trace = SHAPES[args.shape]
    replay = ["routing=replay", f"routing.trace=${{moelab.trace:{trace}}}"]
    graph, eager = ["execution.graphs=on"], ["execution.graphs=off"]
    if args.quick:
        graph = ["execution.graphs=auto"]  # a CPU takes the eager path (and says so in graph_note)
    pts: list[tuple[str, list[str]]] = []
    for frac in args.budgets:
        pts.append((f"graph on_demand {frac:g}", [*replay, *graph, "policy=on_demand", f"budget.fraction={frac}"]))
    for frac in (1.0, 0.25):
        pts.append((f"eager on_demand {frac:g}", [*replay, *eager, "policy=on_demand", f"budget.fraction={frac}"]))
    for policy in args.eager_policies:
        pts.append((f"eager {policy} 0.25", [*replay, *eager, f"policy={policy}", "budget.fraction=0.25"]))
    pts.append(("graph on_demand 1 native", [*graph, "policy=on_demand", "budget.fraction=1.0",
                                             "workload.num_prompts=2", f"workload.max_new_tokens={args.tokens}"]))
    pts.append(("eager on_demand 1 native", [*eager, "policy=on_demand", "budget.fraction=1.0",
                                             "workload.num_prompts=2", f"workload.max_new_tokens={args.tokens}"]))
    return pts


def speed(args: argparse.Namespace) -> None:
    import pandas as pd

    from moelab.results.store import append_row
    from moelab.runner import run

    preset, _ = SHAPES[args.shape]
    base = [f"model={preset}", "model.random_init=true", f"model.num_layers={args.layers}", "progress=false",
            f"results_dir={args.scratch}", "experiment_name=decode_speed", "reference=false"]
    if args.quick:  # the tiny random model on the CPU: exercises every point, measures nothing
        base = ["model=tiny", "device=cpu", *base[3:]]
    prov = provenance()
    out = ROOT / "benchmarks" / "results" / "decode_speed.parquet"
    rows = []
    points = speed_points(args)
    for r in range(args.rounds):
        for i, (label, over) in enumerate(points):
            extra = ["reference=true"] if (r == 0 and i == 0) else []  # the plain model's eager generate, once
            t0 = time.time()
            try:
                row = run(compose([*base, *over, *extra]))
            except Exception as e:  # noqa: BLE001 - the run's own row is recorded; the sweep goes on
                row = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            row.update(prov, label=label, round=r, shape=args.shape, bench_layers=args.layers,
                       bench_wall_s=time.time() - t0)
            rows.append(row)
            if not args.quick:
                append_row(out, row)
            view = {k: row.get(k) for k in COLUMNS}
            if row.get("status") != "ok":
                print("  error:", str(row.get("error", ""))[:300], flush=True)
            print(f"[{time.time() - t0:5.1f}s] " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in view.items() if v is not None), flush=True)
    df = pd.DataFrame(rows)
    cols = [c for c in COLUMNS if c in df]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))


def exactness(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from moelab.core import registry
    from moelab.decoding.autoregressive import AutoregressiveDecoding
    from moelab.decoding.steps import GraphStep, static_length
    from moelab.models.build import materialize, plan_model
    from moelab.offload.graph_executor import GraphExecutor
    from moelab.offload.kernels import ExpertKernel
    from moelab.results.store import append_row
    from moelab.workloads.builtin import PROMPTS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prov = provenance()
    dec = AutoregressiveDecoding()
    trained = [("code_moe", ["model=code_moe"]), ("code_moe_fine", ["model=code_moe_fine"])]
    models = [*(trained if args.trained else []),
              ("mixtral", ["model=mixtral", "model.random_init=true", "model.num_layers=2"]),
              ("qwen3_moe", ["model=qwen3_moe", "model.random_init=true", "model.num_layers=4"]),
              ("olmoe", ["model=olmoe", "model.random_init=true", "model.num_layers=4"]),
              ("qwen2_moe", ["model=qwen2_moe", "model.random_init=true", "model.num_layers=4"]),
              ("deepseek_v2_lite", ["model=deepseek_v2_lite", "model.random_init=true", "model.num_layers=4"])]
    if args.models:
        models = [m for m in models if m[0] in args.models]
    if args.quick:  # CPU smoke test: the tiny random model
        device, models = torch.device("cpu"), [("tiny", ["model=tiny"])]
    rows = []
    for name, over in models:
        cfg = compose(over + [f"device={device.type}"])
        plan = plan_model(cfg["model"], device)
        om = materialize(plan, device)
        prompts = [[om.tokenizer.encode(p)[:48]] for p in PROMPTS[: args.prompts]]
        om.reference.materialize()
        with om.using(om.reference):
            plain = dec.generate(om, prompts, args.tokens)
            plain_graph = dec.generate(om, prompts, args.tokens, step_factory=lambda m, b, n: GraphStep(
                m, b, static_length(m, n)))
        om.reference.release()
        spec = om.spec
        for cap in sorted({spec.top_k, spec.total_experts // 8, spec.total_experts // 4, spec.total_experts // 2,
                           spec.total_experts}):
            if cap < spec.top_k:
                continue
            policies = [registry.build(kind, {"name": name})
                        for kind, name in (("prefetch", "none"), ("cache", "lru"), ("balancer", "gpu_only"))]
            ex = GraphExecutor(om.store, {layer: ExpertKernel(m) for layer, m in om.hf_experts.items()}, spec, cap,
                               device, *policies)
            with om.using(ex):
                out = dec.generate(om, prompts, args.tokens)
            same = sum(a == b for o, p in zip(out.new_tokens, plain.new_tokens) for a, b in zip(o, p))
            same_g = sum(a == b for o, p in zip(out.new_tokens, plain_graph.new_tokens) for a, b in zip(o, p))
            total = sum(len(p) for p in plain.new_tokens)
            row = dict(prov, model=name, capacity=cap, total_experts=spec.total_experts, tokens=total,
                       agree_plain=same / total, agree_plain_graph=same_g / total,
                       identical_to_plain=out.new_tokens == plain.new_tokens,
                       identical_to_plain_graph=out.new_tokens == plain_graph.new_tokens,
                       graph_replays=ex.counters.graph_replays, evictions=ex.counters.evictions,
                       capture_failure=next((s.failure for s in ex.graph_steps.values() if s.failure), ""))
            rows.append(row)
            if device.type == "cuda":
                append_row(ROOT / "benchmarks" / "results" / "exactness.parquet", row)
            print(row, flush=True)
            del ex
        del om
        torch.cuda.empty_cache() if device.type == "cuda" else None
    print(pd.DataFrame(rows)[["model", "capacity", "total_experts", "tokens", "identical_to_plain",
                              "identical_to_plain_graph", "agree_plain", "graph_replays", "evictions",
                              "capture_failure"]].to_string(index=False))


def table(args: argparse.Namespace) -> None:
    """benchmarks/README.md's decode-speed tables, from the committed raw rows (one table per device and commit)."""
    import pandas as pd

    df = pd.read_parquet(ROOT / "benchmarks" / "results" / "decode_speed.parquet")
    cols = {"label": "point", "execution_path": "path", "tpot_median_ms": "TPOT p50 ms", "tokens_per_s": "tok/s",
            "hit_rate": "hit rate", "compute_floor_ms_per_token": "compute floor ms", "floor_ms_per_token": "floor ms",
            "efficiency": "efficiency", "host_syncs_per_token": "syncs/token",
            "graph_replays_per_token": "replays/token", "status": "status"}
    for (device, commit), g in df.groupby(["bench_device", "bench_commit"], sort=False):
        print(f"\n{device}, commit {commit}, `{g.bench_command.iloc[0]}`\n")
        print(g[list(cols)].rename(columns=cols).to_markdown(index=False, floatfmt=".3g"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["speed", "exactness", "table"])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (native rows; exactness: 200)")
    ap.add_argument("--prompts", type=int, default=2, help="exactness: prompts per model")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    ap.add_argument("--eager-policies", nargs="*", default=["qhs", "oracle", "fiddler"])
    ap.add_argument("--scratch", default="/tmp/moelab_decode_speed")
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (smoke test)")
    ap.add_argument("--models", nargs="*", help="exactness: only these of its models")
    ap.add_argument("--trained", action="store_true", help="exactness: also the trained checkpoints")
    args = ap.parse_args()
    {"speed": speed, "exactness": exactness, "table": table}[args.what](args)


if __name__ == "__main__":
    main()
