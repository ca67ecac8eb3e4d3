"""Executor benchmark: exactness on the device, overhead at full budget, on-demand offloading at real sizes.

    python benchmarks/executor.py                 # on the GPU machine (see benchmarks/README.md)
    python benchmarks/executor.py --quick         # small shapes, runs anywhere (CPU included)

Sections (each prints rows as it goes; the full table is printed last and written to --out):
  exactness  greedy tokens and logits of the offloaded model vs the plain HF model, same device/dtype,
             at 25% and full budget, for several architectures
  overhead   TPOT of the plain HF model (all experts on the device) vs moelab at full budget, same
             prompts, alternating rounds in one process
  offload    Mixtral-8x7B / Qwen3-30B-A3B / OLMoE shapes with random weights at 25% and 50% budgets,
             on-demand + LRU through the real runner: TPOT, hit rate, H2D GB/s, stall share, overlap
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moelab.core import registry  # noqa: E402
from moelab.decoding.autoregressive import AutoregressiveDecoding  # noqa: E402
from moelab.models.build import offload_hf_model  # noqa: E402
from moelab.models.plain import PlainModel  # noqa: E402
from moelab.offload.executor import OffloadExecutor  # noqa: E402
from moelab.offload.kernels import ExpertKernel  # noqa: E402
from moelab.workloads.builtin import PROMPTS  # noqa: E402

DEC = AutoregressiveDecoding()


def executor_for(om, capacity: int) -> OffloadExecutor:
    return OffloadExecutor(
        om.store, {layer: ExpertKernel(m) for layer, m in om.hf_experts.items()}, om.spec, capacity, om.device,
        registry.get("prefetch", "none")(), registry.get("cache", "lru")(), registry.get("balancer", "gpu_only")(),
    )


def batches(tok, n_prompts: int) -> list[list[list[int]]]:
    return [[tok.encode(p)] for p in PROMPTS[:n_prompts]]


def build_plain(arch: str, overrides: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    cfg = AutoConfig.for_model(arch, **overrides)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():  # transformers zero-initialises biases: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias") and "norm" not in name:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def timed(mdl, bs, new_tokens) -> tuple[list[list[int]], list[torch.Tensor], float, float]:
    gen = DEC.generate(mdl, bs, new_tokens, keep_logits=True)
    per_tok = gen.decode_ms_per_token()
    return gen.new_tokens, gen.logits, float(pd.Series(per_tok).mean()), float(pd.Series(per_tok).median())


def compare(ref_tokens, ref_logits, tokens, logits) -> dict:
    same = sum(a == b for r, o in zip(ref_tokens, tokens) for a, b in zip(r, o))
    total = sum(len(r) for r in ref_tokens)
    diffs = [(a - b).abs().max().item() for a, b in zip(ref_logits, logits)]
    scale = max(a.abs().max().item() for a in ref_logits)
    return {
        "tokens_identical": ref_tokens == tokens,
        "token_agreement": same / total,
        "max_abs_logit_diff": max(diffs),
        "max_rel_logit_diff": max(diffs) / scale,
        "logits_bitwise": all(torch.equal(a, b) for a, b in zip(ref_logits, logits)),
    }


EXACT_ARCHS = {
    "mixtral": dict(hidden_size=1024, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=4, num_local_experts=16, num_experts_per_tok=2, vocab_size=4096),
    "qwen3_moe": dict(hidden_size=1024, intermediate_size=2048, moe_intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=128, num_experts=32,
                      num_experts_per_tok=8, norm_topk_prob=True, vocab_size=4096),
    "gpt_oss": dict(hidden_size=1024, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=128, num_local_experts=16, num_experts_per_tok=4,
                    vocab_size=4096, sliding_window=64),
    "deepseek_v3": dict(hidden_size=1024, intermediate_size=2048, moe_intermediate_size=512, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=8, n_routed_experts=32, n_shared_experts=1,
                        num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1, kv_lora_rank=64,
                        q_lora_rank=None, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64,
                        vocab_size=4096),
}


def section_exactness(device, dtype, quick: bool) -> list[dict]:
    rows = []
    archs = ["mixtral", "qwen3_moe"] if quick else list(EXACT_ARCHS)
    for arch in archs:
        over = dict(EXACT_ARCHS[arch])
        if quick:
            over.update(hidden_size=128, intermediate_size=256, vocab_size=512)
            over.pop("moe_intermediate_size", None)
            over.pop("head_dim", None)
        plain_model = build_plain(arch, over, device, dtype)
        plain = PlainModel(plain_model, device)
        bs = batches(plain.tokenizer, 4 if quick else 6)
        new = 8 if quick else 24
        ref_tokens, ref_logits, _, _ = timed(plain, bs, new)
        om = offload_hf_model(copy.deepcopy(plain_model), device)
        for frac in (0.25, 1.0):
            cap = max(om.spec.top_k, round(frac * om.spec.total_experts))
            ex = executor_for(om, cap)
            with om.using(ex):
                DEC.generate(om, bs[:1], 2)  # warm-up: at full budget this makes every layer resident
                tokens, logits, _, _ = timed(om, bs, new)
            row = {"section": "exactness", "model": arch, "dtype": str(dtype), "budget_fraction": frac,
                   "budget_experts": cap, **compare(ref_tokens, ref_logits, tokens, logits)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del om, plain_model, plain
        free_memory()
    return rows


def section_overhead(device, dtype, quick: bool, rounds: int = 3) -> list[dict]:
    over = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000)
    if quick:
        over.update(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4,
                    vocab_size=512)
    model = build_plain("mixtral", over, device, dtype)
    plain = PlainModel(model, device)
    bs = batches(plain.tokenizer, 6)
    new = 8 if quick else 32
    timed(plain, bs[:1], 4)  # warm-up
    ref_tokens, ref_logits, _, _ = timed(plain, bs, new)
    om = offload_hf_model(copy.deepcopy(model), device)  # same weights, experts in the pinned store
    variants = {"moelab full budget": executor_for(om, om.spec.total_experts)}
    for ex in variants.values():
        with om.using(ex):
            DEC.generate(om, bs, 2)  # every expert resident before timing
    # Alternate plain and moelab rounds so drift on the machine hits both; compare medians per token.
    plain_ms: list[float] = []
    moelab_ms: dict[str, list[float]] = {k: [] for k in variants}
    results = {}
    for _ in range(rounds):
        plain_ms += DEC.generate(plain, bs, new).decode_ms_per_token()  # unmodified transformers model
        for label, ex in variants.items():
            with om.using(ex):
                gen = DEC.generate(om, bs, new, keep_logits=True)
            moelab_ms[label] += gen.decode_ms_per_token()
            results[label] = (gen.new_tokens, gen.logits)
    rows = []
    plain_median = float(pd.Series(plain_ms).median())
    for label, (tokens, logits) in results.items():
        median = float(pd.Series(moelab_ms[label]).median())
        row = {"section": "overhead", "model": "mixtral-8x7b-shape-4L", "variant": label,
               "plain_tpot_median_ms": plain_median, "tpot_median_ms": median, "overhead_x": median / plain_median,
               "tokens_measured": len(moelab_ms[label]), **compare(ref_tokens, ref_logits, tokens, logits)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    del om, model, plain
    free_memory()
    return rows


OFFLOAD_MODELS = (("mixtral", 8), ("qwen3_moe", 12), ("olmoe", 16))


def section_offload(device, quick: bool, out: Path) -> list[dict]:
    from hydra import compose, initialize_config_dir

    from moelab.runner import run

    rows = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for preset, layers in OFFLOAD_MODELS:
            for frac in (0.25, 0.5):
                overrides = [
                    f"model={preset}", "model.random_init=true", f"model.num_layers={2 if quick else layers}",
                    f"budget.fraction={frac}",
                    "experiment_name=bench_executor", f"results_dir={out}", "progress=false", "logger.console=false",
                    f"workload.max_new_tokens={6 if quick else 32}", f"device={device.type}",
                ]
                if quick:
                    overrides += ["++model.config.hidden_size=128", "++model.config.intermediate_size=256",
                                  "++model.config.vocab_size=512", "++model.config.moe_intermediate_size=64",
                                  "++model.config.num_attention_heads=4", "++model.config.num_key_value_heads=2",
                                  "model.dtype=float32"]
                    if preset == "qwen3_moe":
                        overrides += ["++model.config.head_dim=32"]
                    if preset == "olmoe":
                        overrides += ["++model.config.num_key_value_heads=4"]
                cfg = compose("config", overrides=overrides)
                t0 = time.time()
                r = run(cfg)
                row = {"section": "offload", "model": r["model"], "layers": r["layers"],
                       "expert_mib": r["expert_mib"], "budget_fraction": frac, "budget_experts": r["budget_experts"],
                       "tpot_ms": r["tpot_ms"], "tpot_median_ms": r["tpot_median_ms"],
                       "tokens_per_s": r["tokens_per_s"], "hit_rate": r["hit_rate"],
                       "h2d_gbps_demand": r["h2d_gbps_demand"], "stall_share": r["stall_share"],
                       "overlap": r["overlap"], "floor_ms_per_token": r["floor_ms_per_token"],
                       "efficiency": r["efficiency"], "token_agreement": r["token_agreement"],
                       "ref_tpot_median_ms": r.get("ref_tpot_median_ms"),
                       "ttft_ms": r["ttft_ms"], "wall_s": time.time() - t0}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_executor"))
    ap.add_argument("--sections", default="exactness,overhead,offload")
    ap.add_argument("--quick", action="store_true", help="small shapes (CPU smoke test)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch "
          f"{torch.__version__}, dtype {dtype}", flush=True)
    rows: list[dict] = []
    sections = args.sections.split(",")
    if "exactness" in sections:
        rows += section_exactness(device, dtype, args.quick)
    if "overhead" in sections:
        rows += section_overhead(device, dtype, args.quick)
    if "offload" in sections:
        rows += section_offload(device, args.quick, out)
    df = pd.DataFrame(rows)
    df.to_parquet(out / "executor_benchmark.parquet", index=False)
    df.to_csv(out / "executor_benchmark.csv", index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    for section, part in df.groupby("section", sort=False):
        print(f"\n== {section}")
        print(part.dropna(axis=1, how="all").drop(columns="section").to_string(index=False, float_format="%.4g"))


if __name__ == "__main__":
    main()
