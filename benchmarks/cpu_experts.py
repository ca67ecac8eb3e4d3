"""How the CPU path's expert outputs compare with the GPU's, and what each CPU compute dtype costs.

For one expert of each model shape and a few token counts: the fraction of output elements that differ from
the correctly rounded result (the bf16 GEMM done in float64, rounded to bf16 where the GPU path rounds), for
the GPU kernel, the CPU worker in the stored dtype (`cpu_dtype=native`) and in float32 (`cpu_dtype=float32`),
the fraction where CPU and GPU disagree, and the CPU worker's time per call. Explains the token agreement of
runs that compute experts on the CPU: elements that differ by one bf16 rounding step can flip a greedy token.

    python benchmarks/cpu_experts.py                 # on the GPU machine
    python benchmarks/cpu_experts.py --quick         # tiny shapes, runs anywhere (the GPU column is the CPU's)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, common_args  # noqa: E402

from moelab.models.build import materialize, plan_model  # noqa: E402
from moelab.offload.cpu_worker import CpuExpertWorker  # noqa: E402
from moelab.offload.kernels import ExpertKernel, _per_group_linear  # noqa: E402

SHAPES = {"mixtral": ["model=mixtral", "model.random_init=true", "model.num_layers=1"],
          "qwen3_moe": ["model=qwen3_moe", "model.random_init=true", "model.num_layers=1"]}
QUICK = ["model=tiny", "model.dtype=bfloat16"]


def truth(kernel: ExpertKernel, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """float64 GEMMs, each rounded to the activations' dtype as the native path rounds them (no biases: the
    shapes measured here have none)."""
    n = [x.shape[0]]
    h = _per_group_linear(x.double(), w[kernel.up_name].double().unsqueeze(0), n, None, kernel.transposed)
    h = kernel.module._apply_gate(h.to(x.dtype)) if kernel.has_gate else kernel.module.act_fn(h.to(x.dtype))
    return _per_group_linear(h.double(), w["down_proj"].double().unsqueeze(0), n, None, kernel.transposed).to(x.dtype)


def compare(om, tokens: list[int], reps: int) -> list[dict]:
    layer = om.spec.moe_layers[0]
    kernel = ExpertKernel(om.hf_experts[layer])
    w = om.store.expert(layer, 0)
    gpu_w = {n: t.to(om.device).unsqueeze(0) for n, t in w.items()}
    workers = {"native": CpuExpertWorker(om.store, {layer: kernel}),
               "float32": CpuExpertWorker(om.store, {layer: kernel}, dtype=torch.float32)}
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in tokens:
        x = torch.randn(n, om.spec.hidden_size, generator=gen).to(om.dtype)
        want = truth(kernel, x, w)
        offs = torch.tensor([n], dtype=torch.int32, device=om.device)
        gpu = kernel(x.to(om.device), gpu_w, offs, None, [n]).cpu()
        row = {"model": om.name, "tokens": n, "gpu_vs_exact": (gpu != want).float().mean().item()}
        for name, worker in workers.items():
            y = worker.compute(layer, [0], [n], x)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                worker.compute(layer, [0], [n], x)
                times.append((time.perf_counter() - t0) * 1e3)
            row[f"cpu_{name}_vs_exact"] = (y != want).float().mean().item()
            row[f"cpu_{name}_vs_gpu"] = (y != gpu).float().mean().item()
            row[f"cpu_{name}_max_rel"] = ((y.double() - gpu.double()).abs().max() / gpu.double().abs().max()).item()
            row[f"cpu_{name}_ms"] = statistics.median(times)
        rows.append(row)
        print(row, flush=True)
    for worker in workers.values():
        worker.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_cpu_experts"))
    ap.add_argument("--models", default="mixtral,qwen3_moe")
    ap.add_argument("--tokens", default="1,4,16")
    args = common_args(ap)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    device = torch.device(args.device)
    tokens = [int(t) for t in args.tokens.split(",")]
    rows = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for name in (["tiny"] if args.quick else args.models.split(",")):
            cfg = compose("config", overrides=QUICK if args.quick else SHAPES[name])
            mcfg = OmegaConf.to_container(cfg.model, resolve=True)
            om = materialize(plan_model(mcfg, device), device)
            rows += compare(om, tokens, 2 if args.quick else 5)
            del om
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "cpu_experts.csv", index=False)
    pd.set_option("display.width", 250)
    print(df.to_string(index=False, float_format="%.4g"))


if __name__ == "__main__":
    main()
