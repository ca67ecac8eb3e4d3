"""MoE-SpAc benchmark: speculative decoding as the lookahead sensor, CPU/GPU balancing and utility caching,
against autoregressive and SD-based baselines, side by side in one process at one GPU budget.

    python benchmarks/spac.py                   # on the GPU machine: the committed code_moe + code_draft and traces
    python benchmarks/spac.py --ckpt checkpoints/v1/code_moe_fine          # the fine-grained reference model
    python benchmarks/spac.py --quick                                     # tiny random models, runs anywhere

Sections (rows print as they finish; the tables are printed last and written to --out):
  trained  a committed reference pair (--ckpt target + --draft): every configuration below with native
           routing and real acceptance; records the autoregressive and speculative (gamma 2/4/8) traces into
           --out as <target>_{ar,g2,g4,g8}.parquet.
  replay   Mixtral-8x7B / Qwen3-30B-A3B shapes (random weights, real expert sizes) replaying --traces (default:
           the committed checkpoints/v1/traces; --traces OUT replays what the trained section recorded):
           each verification pass routes the recorded tokens with the recorded acceptance, so transfers have
           real sizes while routing and acceptance are the trained pair's. A small random dense draft runs on
           the GPU (its cost is real, its proposals are replaced by the recorded acceptance).
Configurations: ar (autoregressive, on-demand LRU: the standard baseline), ar+ar_binary, sd (speculative,
on-demand LRU: the SD-based baseline), sd+cpu_cold (Fiddler's rule), spac (spac prefetch + utility cache +
spac balancer), and ablations spac-no-utility (cache=lru), spac-no-balancer (balancer=gpu_only),
spac-residency (MoE-SpAc's released code: resident on GPU, rest on CPU), spac gamma 2 and 8. With
--cpu-dtypes native,float32 the configurations that compute on the CPU run once per CPU compute dtype.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ROOT,
    Bench,
    common_args,
    print_tables,
    quick_shapes,
    reference_args,
    target_overrides,
    trace_file,
    vs_baseline,
)

KEYS = ["section", "model", "budget", "policy"]
METRICS = ["tpot_ms", "tokens_per_s", "vs_sd", "vs_ar", "acceptance_rate", "mean_accepted_len", "hit_rate",
           "cpu_share", "h2d_mib_demand", "h2d_mib_prefetch", "h2d_mib_wasted", "stall_share", "overlap",
           "cpu_ms", "cpu_wait_ms", "unique_experts_per_verify", "signal_binary_recall", "signal_freq_recall",
           "signal_freq_at_k_recall", "signal_binary_precision", "signal_freq_precision", "prediction_topk_recall",
           "token_agreement"]
SD = ["decoding=speculative"]
CONFIGS: list[tuple[str, str, list[str]]] = [  # label, trace kind (for replay), overrides
    ("ar", "ar", ["policy=on_demand"]),
    ("ar+ar_binary", "ar", ["policy=ar_binary"]),
    ("sd", "g4", [*SD, "prefetch=none", "cache=lru", "balancer=gpu_only"]),
    ("sd+cpu_cold", "g4", [*SD, "prefetch=none", "cache=lru", "balancer=cpu_cold"]),
    ("spac", "g4", ["policy=spac"]),
    ("spac-no-utility", "g4", ["policy=spac", "cache=lru"]),
    ("spac-no-balancer", "g4", ["policy=spac", "balancer=gpu_only"]),
    ("spac-residency", "g4", ["policy=spac", "balancer=residency"]),
    ("spac g=2", "g2", ["policy=spac", "decoding.gamma=2"]),
    ("spac g=8", "g8", ["policy=spac", "decoding.gamma=8"]),
]
CPU_FREE = {"ar", "ar+ar_binary", "sd", "spac-no-balancer"}  # configurations that never compute on the CPU


def with_cpu_dtypes(configs: list[tuple[str, str, list[str]]], dtypes: list[str]) -> list[tuple[str, str, list[str]]]:
    """Each configuration that uses the CPU once per CPU compute dtype (`cpu_dtype`; label suffix beyond native)."""
    out = []
    for label, kind, over in configs:
        for d in (["native"] if label in CPU_FREE else dtypes):
            out.append((label if d == "native" else f"{label} cpu={d}", kind, [*over, f"cpu_dtype={d}"]))
    return out


RECORD = {"ar": "ar", "sd": "g4", "spac g=2": "g2", "spac g=8": "g8"}  # configs whose trained run records a trace
REPLAY_MODELS = [("mixtral", 4), ("qwen3_moe", 12)]
REPLAY_DRAFT = ["decoding.draft.path=null", "decoding.draft.config.hidden_size=1024",
                "decoding.draft.config.intermediate_size=2816", "decoding.draft.config.num_hidden_layers=2",
                "decoding.draft.config.num_attention_heads=8", "decoding.draft.config.num_key_value_heads=8"]


def section_trained(b: Bench, ckpt: str | None, draft: str, budget: float, new_tokens: int, traces: Path,
                    only: set[str] | None = None, configs: list = CONFIGS) -> None:
    model = target_overrides(ckpt) if ckpt else ["model=tiny"]
    draft_path = [f"decoding.draft.path={draft}"] if ckpt else []
    for label, _, over in configs:
        if only is not None and label.split(" cpu=")[0] not in only:
            continue
        extra = ["record_trace=true"] if label in RECORD else []
        uses_sd = any(o.startswith("decoding=") or o == "policy=spac" for o in over)
        r = b.run("trained", label, budget, [*model, *over, *(draft_path if uses_sd else []), *extra,
                                             f"workload.max_new_tokens={new_tokens}"])
        if label in RECORD and r.get("trace_path"):
            shutil.copy(r["trace_path"], trace_file(traces, ckpt or "tiny", RECORD[label]))


def section_replay(b: Bench, budget: float, traces: Path, target: str, models: list[tuple[str, int]], quick: bool,
                   only: set[str] | None = None, configs: list = CONFIGS) -> None:
    for preset, layers in models:
        base = [f"model={preset}", "model.random_init=true", f"model.num_layers={layers}", "routing=replay"]
        if quick:
            base += quick_shapes(preset)
        for label, kind, over in configs:
            if only is not None and label.split(" cpu=")[0] not in only:
                continue
            trace = trace_file(traces, target, kind)
            if not trace.exists():
                print(f"skip {preset} {label}: no {trace.name}", flush=True)
                continue
            uses_sd = kind != "ar"
            b.run("replay", label, budget, [*base, f"routing.trace={trace}", *over,
                                            *(REPLAY_DRAFT if uses_sd and not quick else [])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reference_args(ap)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_spac"))
    ap.add_argument("--sections", default="trained,replay")
    ap.add_argument("--replay-models", default=",".join(f"{m}:{n}" for m, n in REPLAY_MODELS))
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--configs", default=None, help="comma-separated labels to run in the replay section")
    ap.add_argument("--trained-configs", default=None, help="comma-separated labels to run in the trained section")
    ap.add_argument("--cpu-dtypes", default="native", help="cpu_dtype values for configurations using the CPU")
    args = common_args(ap)
    device, out = args.device, args.out
    configs = with_cpu_dtypes(CONFIGS, args.cpu_dtypes.split(","))
    traces = out if args.quick else Path(args.traces)  # --quick replays the tiny traces it just recorded
    target = "tiny" if args.quick else args.ckpt
    b = Bench(out, device, "bench_spac", METRICS)
    sections = args.sections.split(",")
    if "trained" in sections:
        new_tokens = 6 if args.quick else args.new_tokens
        section_trained(b, None if args.quick else args.ckpt, args.draft, args.budget, new_tokens, out,
                        set(args.trained_configs.split(",")) if args.trained_configs else None, configs)
    if "replay" in sections:
        models = [(m, int(n)) for m, n in (x.split(":") for x in args.replay_models.split(","))]
        section_replay(b, args.budget, traces, target, models, args.quick,
                       set(args.configs.split(",")) if args.configs else None, configs)
    df = vs_baseline(b.rows, "sd")
    if len(df):
        df = df.merge(vs_baseline(b.rows, "ar")[["section", "model", "budget", "policy", "vs_ar"]],
                      on=["section", "model", "budget", "policy"], how="left")
    df.to_csv(out / "spac_benchmark.csv", index=False)
    print_tables(df, KEYS, METRICS)


if __name__ == "__main__":
    main()
