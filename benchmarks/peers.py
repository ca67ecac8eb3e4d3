"""moelab's policies against what users would otherwise run, and against the physical floor, in one process.

    python benchmarks/peers.py                       # on the GPU machine: replays the committed code_moe traces
    python benchmarks/peers.py --record-traces       # records them anew from --ckpt + --draft first
    python benchmarks/peers.py --quick               # tiny random models, runs anywhere

Routing comes from two traces of a committed reference pair on the same prompts (--traces, default
checkpoints/v1/traces/code_moe_{ar,g4}.parquet): autoregressive (with its routers' next-layer predictions) and
speculative (gamma 4, with its acceptance); --record-traces records them from --ckpt and --draft. Then,
for each full-size model shape (random weights, real expert sizes) and GPU expert budget, side by side:

  hf_accelerate   transformers + accelerate `device_map` offload with `max_memory` = the bytes moelab keeps on
                  the GPU (non-expert weights + the expert budget): what a transformers user gets today
  on_demand       moelab prefetch=none cache=lru balancer=gpu_only
  gate_prefetch   next-layer gate prefetch (qhs) with LRU: the mixtral-offloading approach
  fiddler         a static hot set from a profile + cold experts on the CPU when that is faster (cpu_cold)
  spec_experts    Speculating Experts: qhs + speculative execution (mlp predictors need the model's own hidden
                  states, which replayed routing does not have; the trained-model benchmark measures them)
  spac            MoE-SpAc: speculative decoding + utility prefetch/cache + the spac balancer (trained draft's
                  acceptance, replayed)
  oracle          future routing known (Belady eviction, one layer call of lookahead)

Every row carries `floor_ms_per_token` (Belady-optimal bytes for its routing and budget over the H2D bandwidth
measured in the same run, or GPU compute if larger) and `efficiency` = floor / TPOT; the accelerate row takes the
floor of the on-demand row (same routing, same budget). Token agreement: against the un-offloaded model, on the
same prompts (the accelerate row on its first prompt's first tokens: it is slow). The accelerate row streams its
offloaded layers from moelab's pinned expert store (no second host copy of the experts): faster than a stock
transformers load, whose CPU weights are pageable; it is the stronger baseline. The table is printed last; rows
go to <out>/peers.parquet and .csv, the figure to results/figures/ via notebooks/peers.py.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, Bench, common_args, print_tables, quick_shapes, reference_args, target_overrides, trace_file  # noqa: E402

SD_DRAFT = ["decoding.draft.path=null", "decoding.draft.config.hidden_size=1024",
            "decoding.draft.config.intermediate_size=2816", "decoding.draft.config.num_hidden_layers=2",
            "decoding.draft.config.num_attention_heads=8", "decoding.draft.config.num_key_value_heads=8"]
SYSTEMS: list[tuple[str, str, list[str]]] = [  # label, trace (ar | sd), overrides
    ("on_demand", "ar", ["policy=on_demand"]),
    ("gate_prefetch", "ar", ["policy=qhs"]),
    ("fiddler", "ar", ["policy=fiddler"]),
    ("spec_experts", "ar", ["policy=qhs", "execution.speculative=router"]),
    ("spac", "sd", ["policy=spac"]),
    ("oracle", "ar", ["policy=oracle"]),
]
TRACE_OF = {"ar": "ar", "sd": "g4"}  # the systems' trace -> its file's kind (speculative at the default gamma 4)
ORDER = ["hf_accelerate", *(s for s, _, _ in SYSTEMS)]
MODELS = [("mixtral", 8), ("qwen3_moe", 12)]
KEYS = ["section", "model", "budget", "policy"]
METRICS = ["tokens_per_s", "tpot_ms", "floor_ms_per_token", "efficiency", "transfer_floor_ms_per_token",
           "compute_floor_ms_per_token", "stall_ms", "copy_ms", "compute_ms", "host_gap_ms", "hit_rate", "cpu_share",
           "stall_share",
           "overlap", "h2d_mib_demand", "h2d_mib_prefetch", "h2d_mib_wasted", "cpu_ms", "acceptance_rate",
           "token_agreement", "accelerate_gpu_bytes", "accelerate_streamed_bytes"]


def record_traces(b: Bench, ckpt: str | None, draft_path: str, prompts: int, new_tokens: int,
                  out: Path) -> dict[str, Path]:
    """The trained pair's routing on the benchmark prompts: autoregressive (with qhs predictions) and speculative."""
    model = target_overrides(ckpt) if ckpt else ["model=tiny"]
    work = [f"workload.num_prompts={prompts}", f"workload.max_new_tokens={new_tokens}", "record_trace=true"]
    draft = [f"decoding.draft.path={draft_path}"] if ckpt else []
    traces = {}
    for kind, over in (("ar", ["policy=on_demand"]), ("sd", ["decoding=speculative", *draft])):
        r = b.run("record", f"trace {kind}", 0.5, [*model, *over, *work])
        if r.get("status") != "ok":
            raise SystemExit(f"recording the {kind} trace failed: {r.get('error')}")
        traces[kind] = trace_file(out, ckpt or "tiny", TRACE_OF[kind])
        shutil.copy(r["trace_path"], traces[kind])
    return traces


def accelerate_row(b: Bench, base: list[str], budget: float, tokens: int) -> dict[str, Any]:
    """The transformers + accelerate offload of the model moelab holds for `base`, on the same weights and routing."""
    import torch

    from moelab.baselines.accelerate_offload import accelerate_model, placement
    from moelab.core import registry
    from moelab.decoding.autoregressive import AutoregressiveDecoding
    from moelab.metrics.summary import token_agreement
    from moelab.models.build import plan_model
    from moelab.offload.budget import resolve_budget
    from moelab.runner import MODELS as LOADED
    from moelab.runner import nonexpert_bytes, resolve_device

    cfg = b.config([*base, "policy=on_demand"], budget)
    device = resolve_device(b.device)
    plan = plan_model(cfg["model"], device)
    om = LOADED.get(cfg["model"], device, plan)  # the model the moelab rows ran on (loaded once)
    routing = registry.build("routing", cfg["routing"])
    batches, _ = routing.workload(int(om.config.vocab_size))
    batches = batches[:1]
    dec = AutoregressiveDecoding()
    row: dict[str, Any] = {"section": "peers", "model": om.name, "budget": budget, "policy": "hf_accelerate"}
    t0 = time.time()
    try:
        experts = resolve_budget(cfg["budget"], plan.spec, device).experts
        gpu_bytes = nonexpert_bytes(plan) + experts * plan.spec.expert_bytes
        om.reference.materialize()
        with om.using(routing.wrap(om.reference, om)):
            ref = dec.generate(om, batches, tokens)
        om.reference.release()
        torch.cuda.empty_cache() if device.type == "cuda" else None
        # on a CPU-only machine (--quick) the "GPU" share is the CPU's and the rest is offloaded to disk
        folder = b.out / "accelerate_offload" if device.type == "cpu" else None
        folder.mkdir(parents=True, exist_ok=True) if folder else None
        pm = accelerate_model(om, gpu_bytes, device, routing, share_experts=True, offload_folder=folder)
        dec.generate(pm, batches, 2)  # warm-up
        pm.backend.reset() if hasattr(pm.backend, "reset") else None  # the replayed trace starts over
        gen = dec.generate(pm, batches, tokens)
        per_token = gen.decode_ms_per_token()
        row.update(tpot_ms=sum(per_token) / len(per_token), tokens_per_s=gen.decode_tokens_per_s(),
                   token_agreement=token_agreement(gen.new_tokens, ref.new_tokens), status="ok", error="",
                   **placement(pm).row())
        del pm
    except Exception as e:  # a failing system is a row, not the end of the benchmark
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
    finally:
        om.reference.release()
        gc.collect()  # accelerate's hooks hold the model in a reference cycle
        torch.cuda.empty_cache() if device.type == "cuda" else None
    row["wall_s"] = round(time.time() - t0, 1)
    print(row, flush=True)
    b.rows.append(row)
    return row


def with_floors(df: pd.DataFrame) -> pd.DataFrame:
    """The accelerate row's floor and efficiency from the on-demand row of its model and budget."""
    df = df.copy()
    base = df[df.policy == "on_demand"].set_index(["model", "budget"])["floor_ms_per_token"]
    for i in df.index[df.policy == "hf_accelerate"]:
        floor = base.get((df.at[i, "model"], df.at[i, "budget"]))
        if floor is not None and pd.notna(df.at[i, "tpot_ms"]):
            df.at[i, "floor_ms_per_token"] = floor
            df.at[i, "efficiency"] = floor / df.at[i, "tpot_ms"]
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reference_args(ap)
    ap.add_argument("--record-traces", action="store_true", help="record the traces from --ckpt and --draft")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_peers"))
    ap.add_argument("--models", default=",".join(f"{m}:{n}" for m, n in MODELS), help="preset:layers,...")
    ap.add_argument("--budgets", default="0.125,0.25,0.5")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--systems", default=",".join(ORDER))
    ap.add_argument("--accelerate-tokens", type=int, default=8, help="tokens the (slow) accelerate row decodes")
    args = common_args(ap)
    out = args.out
    systems = set(args.systems.split(","))
    b = Bench(out, args.device, "bench_peers", METRICS + ["accelerate_offloaded_modules"])
    new_tokens = 6 if args.quick else args.new_tokens
    if args.quick or args.record_traces:
        traces = record_traces(b, None if args.quick else args.ckpt, args.draft, args.prompts, new_tokens, out)
    else:
        traces = {k: trace_file(args.traces, args.ckpt, kind) for k, kind in TRACE_OF.items()}
    for preset, layers in (x.split(":") for x in args.models.split(",")):
        base = [f"model={preset}", "model.random_init=true", f"model.num_layers={layers}", "routing=replay"]
        if args.quick:
            base += quick_shapes(preset)
        for budget in (float(x) for x in args.budgets.split(",")):
            for label, kind, over in SYSTEMS:
                if label in systems:
                    b.run("peers", label, budget, [*base, f"routing.trace={traces[kind]}", *over,
                                                   *(SD_DRAFT if kind == "sd" and not args.quick else [])])
            if "hf_accelerate" in systems:
                accelerate_row(b, [*base, f"routing.trace={traces['ar']}"], budget,
                               min(args.accelerate_tokens, new_tokens))
    df = pd.DataFrame(b.rows)
    df = with_floors(df[(df.section == "peers") & (df.status == "ok")]) if len(df) else df
    df["device"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    if len(df):
        df["policy"] = pd.Categorical(df.policy, ORDER, ordered=True)
        df = df.sort_values(["model", "budget", "policy"])
        df["policy"] = df.policy.astype(str)
    df.to_csv(out / "peers.csv", index=False)
    df.to_parquet(out / "peers.parquet", index=False)
    failed = [r for r in b.rows if r.get("status") != "ok"]
    for r in failed:
        print(f"FAILED {r.get('model')} {r.get('budget')} {r.get('policy')}: {r.get('error')}")
    print_tables(df, KEYS, METRICS)


if __name__ == "__main__":
    main()
