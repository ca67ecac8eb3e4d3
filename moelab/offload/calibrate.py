"""Measure the CostModel of a loaded model on this machine: one expert's H2D copy, and one expert's compute
time by token count on the device and on the CPU worker, with the executor's own kernels and buffers.

Cached per machine and model shape (device name, expert tensor shapes and dtype, torch version, CPU
threads) under $MOELAB_CACHE (default ~/.cache/moelab)/costs/, so a run measures once and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from moelab.core.cost import CostModel
from moelab.offload.clock import clock_for
from moelab.offload.cpu_worker import CpuExpertWorker
from moelab.offload.kernels import ExpertKernel

TOKENS = (1, 2, 4, 8, 16, 32, 64)


def cache_dir() -> Path:
    return Path(os.environ.get("MOELAB_CACHE", Path.home() / ".cache" / "moelab")) / "costs"


def cost_key(om: Any) -> dict[str, Any]:
    dev = om.device
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})",
        "cpu_threads": torch.get_num_threads(),
        "experts": [[t.name, list(t.shape), str(t.dtype)] for t in om.store.layout.tensors],
        "hidden_size": om.spec.hidden_size,
        "torch": torch.__version__,
    }


def cost_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}.json"


def _time(fn, clock, reps: int) -> float:
    """Median ms of `fn` over `reps` after one warm-up, timed with the device's clock."""
    fn()
    out = []
    for _ in range(reps):
        clock.synchronize()
        a = clock.mark()
        fn()
        b = clock.mark()
        clock.synchronize()
        out.append(clock.ms_between(a, b))
    return statistics.median(out)


def measure(om: Any, tokens: tuple[int, ...] = TOKENS, reps: int = 5) -> CostModel:
    """Time one expert of the first MoE layer: copy, device compute and CPU compute at each token count."""
    dev, store = om.device, om.store
    layer = om.spec.moe_layers[0]
    kernel = ExpertKernel(om.hf_experts[layer])
    clock = clock_for(dev)
    src = store.expert(layer, 0)
    dst = {n: torch.empty_like(t, device=dev) for n, t in src.items()}

    def copy() -> None:
        for n, t in dst.items():
            t.copy_(src[n], non_blocking=True)

    h2d = _time(copy, clock, reps)
    pools = {n: t.unsqueeze(0) for n, t in dst.items()}
    dtype = store.layout.tensors[0].dtype
    gpu, cpu = [], []
    worker = CpuExpertWorker(store, {layer: kernel})
    try:
        for n in tokens:
            x = torch.randn(n, om.spec.hidden_size, device=dev, dtype=dtype)
            offs = torch.tensor([n], dtype=torch.int32, device=dev)
            slots = torch.zeros(n, dtype=torch.long, device=dev) if kernel.has_bias else None
            gpu.append((n, _time(lambda x=x, offs=offs, slots=slots, n=n: kernel(x, pools, offs, slots, [n]),
                                 clock, reps)))
            xc = x.cpu()
            t = []
            for _ in range(max(2, reps // 2)):
                t0 = time.perf_counter()
                worker.compute(layer, [0], [n], xc)
                t.append((time.perf_counter() - t0) * 1e3)
            cpu.append((n, statistics.median(t)))
    finally:
        worker.close()
    return CostModel(store.expert_bytes, h2d, gpu, cpu, cost_key(om))


def cost_model(om: Any, recalibrate: bool = False) -> CostModel:
    """The cached CostModel of this machine and model shape, measured now if there is none."""
    key = cost_key(om)
    path = cost_path(key)
    if path.exists() and not recalibrate:
        return CostModel.load(path)
    cm = measure(om)
    cm.save(path)
    return cm
