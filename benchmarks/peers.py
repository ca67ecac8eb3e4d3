"""The transformers + accelerate offload baseline at the points of `+experiment=peers`, for its figure.

    python run.py -m +experiment=peers                  # moelab's systems (conf/experiment/system/), every budget
    python benchmarks/peers.py                          # then accelerate at the same points (same overrides)
    python notebooks/peers.py                           # the figure, both together

accelerate is not a moelab component (it replaces the executor), so it cannot be a point of the sweep. This script
composes the experiment's on-demand point with the same overrides (model shapes, trace, results_dir), loads the
same model moelab ran (same weights, same replayed routing) and runs transformers + accelerate `device_map` offload
with `max_memory` = the bytes moelab keeps on the GPU (non-expert weights + the expert budget): what a
transformers user gets today. It streams its offloaded layers from moelab's pinned expert store (no second host
copy of the experts): faster than a stock transformers load, whose CPU weights are pageable; the stronger baseline.
Token agreement is against the un-offloaded model on the trace's first prompt (accelerate is slow: --tokens new
tokens). Rows are added to <results_dir>/peers/accelerate.parquet, written atomically after each point; the
notebook gives each the floor of the on-demand row of its model and budget.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compose(overrides: list[str], budget: float) -> dict[str, Any]:
    """The experiment's on-demand point at `budget`, as the sweep resolves it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import moelab  # noqa: F401  (registers the `${moelab.trace:...}` resolver)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose("config", overrides=["+experiment=peers", "+experiment/system=on_demand", *overrides,
                                                 f"budget.fraction={budget}"])
    return OmegaConf.to_container(cfg, resolve=True)


def accelerate_row(cfg: dict[str, Any], tokens: int) -> dict[str, Any]:
    """transformers + accelerate offload of the model moelab holds for `cfg`, on the same weights and routing."""
    from moelab.assembly import MODELS, nonexpert_bytes, resolve_device
    from moelab.baselines.accelerate_offload import accelerate_model, placement
    from moelab.core import registry
    from moelab.decoding.autoregressive import AutoregressiveDecoding
    from moelab.metrics.summary import token_agreement
    from moelab.models.build import plan_model
    from moelab.offload.budget import resolve_budget
    from moelab.results.row import device_index, device_name

    device = resolve_device(cfg["device"])
    plan = plan_model(cfg["model"], device)
    om = MODELS.get(cfg["model"], device, plan)
    routing = registry.build("routing", cfg["routing"])
    batches = routing.workload(int(om.config.vocab_size))[0][:1]
    dec = AutoregressiveDecoding()
    row: dict[str, Any] = {"model": om.name, "budget": cfg["budget"]["fraction"], "policy": "hf_accelerate",
                           "device": device.type, "device_name": device_name(device),
                           "device_index": device_index(device),
                           "trace": cfg["routing"]["trace"], "tokens": tokens}
    t0 = time.time()
    try:
        experts = resolve_budget(cfg["budget"], plan.spec, device).experts
        gpu_bytes = nonexpert_bytes(plan) + experts * plan.spec.expert_bytes
        om.reference.materialize()
        with om.using(routing.wrap(om.reference, om)):
            ref = dec.generate(om, batches, tokens)
        om.reference.release()
        torch.cuda.empty_cache() if device.type == "cuda" else None
        # on a CPU-only machine the "GPU" share is the CPU's and the rest is offloaded to disk
        folder = None
        if device.type == "cpu":
            folder = Path(cfg["results_dir"]) / cfg["experiment_name"] / "accelerate_offload"
            folder.mkdir(parents=True, exist_ok=True)
        pm = accelerate_model(om, gpu_bytes, device, routing, share_experts=True, offload_folder=folder)
        dec.generate(pm, batches, 2)  # warm-up
        pm.backend.reset() if hasattr(pm.backend, "reset") else None  # the replayed trace starts over
        gen = dec.generate(pm, batches, tokens)
        per_token = gen.decode_ms_per_token()
        row.update(tpot_ms=sum(per_token) / len(per_token), tokens_per_s=gen.decode_tokens_per_s(),
                   token_agreement=token_agreement(gen.new_tokens, ref.new_tokens), status="ok", error="",
                   **placement(pm).row())
        del pm
    except Exception as e:  # a failing point is a row, not the end of the benchmark
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
    finally:
        om.reference.release()
        gc.collect()  # accelerate's hooks hold the model in a reference cycle
        torch.cuda.empty_cache() if device.type == "cuda" else None
    row["wall_s"] = round(time.time() - t0, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="0.125,0.25,0.5", help="the experiment's budget.fraction values")
    ap.add_argument("--tokens", type=int, default=8, help="new tokens accelerate decodes (it is slow)")
    ap.add_argument("overrides", nargs="*", help="the Hydra overrides the sweep ran with (model, trace, ...)")
    args = ap.parse_args()
    from moelab.results.store import append_row

    print(f"torch {torch.__version__}", flush=True)
    for budget in (float(b) for b in args.budgets.split(",")):
        cfg = compose(args.overrides, budget)
        out = Path(cfg["results_dir"]) / cfg["experiment_name"] / "accelerate.parquet"
        row = accelerate_row(cfg, args.tokens)
        print(row, flush=True)
        append_row(out, row)  # beside the rows already there (other models, devices), atomically
    print("written:", out)


if __name__ == "__main__":
    main()
