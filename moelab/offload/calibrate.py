"""Measure the CostModel of a loaded model on this machine: one expert's H2D copy, one expert's compute
time by token count on the device and on the CPU worker, and the fixed cost of a layer call's trip through
the CPU worker (its inputs down, the thread hand-off, its outputs up), with the executor's own kernels,
buffers and CPU path.

Cached per machine and model shape (device name, expert tensor shapes and dtype, CPU compute dtype, torch
version, CPU threads) under $MOELAB_CACHE (default ~/.cache/moelab)/costs/, so a run measures once and reuses it.

Also the copy engine's peak host-to-device bandwidth (`h2d_peak_gbps`), once per machine (device name and torch
version), cached beside them: the transfer floor's denominator (moelab.metrics.floors).
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
from moelab.offload.layer_batch import LayerBatch

TOKENS = (1, 2, 4, 8, 16, 32, 64)


def cache_dir() -> Path:
    return Path(os.environ.get("MOELAB_CACHE", Path.home() / ".cache" / "moelab")) / "costs"


COST_VERSION = 2  # bump when what is measured changes: older cached files are then measured again


def cost_key(om: Any, cpu_dtype: torch.dtype | None = None) -> dict[str, Any]:
    dev = om.device
    return {
        "version": COST_VERSION,
        "cpu_dtype": str(cpu_dtype or om.store.layout.tensors[0].dtype),
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


def _cpu_roundtrip_ms(worker: CpuExpertWorker, layer: int, hidden: torch.Tensor, reps: int) -> float:
    """Median wall ms of one token through the executor's CPU path (submit then finish) minus the worker's own
    compute time in it: what using the CPU at all costs a layer call."""
    idx = torch.zeros(1, 1, dtype=torch.long, device=hidden.device)
    w = torch.ones(1, 1, dtype=hidden.dtype, device=hidden.device)
    out = []
    for i in range(reps + 1):
        batch = LayerBatch.group(hidden, idx, w, [0], [1], hidden.dtype)
        busy = worker.busy_ms
        t0 = time.perf_counter()
        worker.finish(worker.submit(layer, [0], batch), batch)
        batch.combine().sum().item()  # the outputs are on the device and used
        if i:  # the first trip warms the thread and the converted weights
            out.append((time.perf_counter() - t0) * 1e3 - (worker.busy_ms - busy))
    return max(0.0, statistics.median(out))


def measure(om: Any, tokens: tuple[int, ...] = TOKENS, reps: int = 5, cpu_dtype: torch.dtype | None = None
            ) -> CostModel:
    """Time one expert of the first MoE layer: copy, device compute and CPU compute at each token count, and the
    CPU path's fixed cost."""
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
    worker = CpuExpertWorker(store, {layer: kernel}, dtype=cpu_dtype)
    try:
        fixed = _cpu_roundtrip_ms(worker, layer, torch.randn(1, om.spec.hidden_size, device=dev, dtype=dtype), reps)
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
    return CostModel(store.expert_bytes, h2d, gpu, cpu, cost_key(om, cpu_dtype), cpu_fixed_ms=fixed)


def cost_model(om: Any, recalibrate: bool = False, cpu_dtype: torch.dtype | None = None) -> CostModel:
    """The cached CostModel of this machine, model shape and CPU compute dtype, measured now if there is none."""
    key = cost_key(om, cpu_dtype)
    path = cost_path(key)
    if path.exists() and not recalibrate:
        return CostModel.load(path)
    cm = measure(om, cpu_dtype=cpu_dtype)
    cm.save(path)
    return cm


# --------------------------------------------------------------------------- the copy engine's peak bandwidth

H2D_VERSION = 1
H2D_BYTES = 256 * 2**20  # large enough for the copy engine's plateau (about 55 GB/s on PCIe Gen5 from 48 MiB up)


def h2d_key(device: torch.device) -> dict[str, Any]:
    return {"h2d_version": H2D_VERSION, "device": torch.cuda.get_device_name(device), "torch": torch.__version__}


def measure_h2d_gbps(device: torch.device, nbytes: int = H2D_BYTES, reps: int = 10) -> float:
    """Peak GB/s of one pinned host-to-device copy of `nbytes` on a side stream (the best of `reps`, timed with
    CUDA events): the fastest the copy engine moves bytes, whatever the copies' sizes."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    stream = torch.cuda.Stream(device)
    best = float("inf")
    with torch.cuda.stream(stream):
        for i in range(reps + 1):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            dst.copy_(src, non_blocking=True)
            b.record(stream)
            b.synchronize()
            if i:  # the first copy warms the path
                best = min(best, a.elapsed_time(b))
    del src, dst
    return nbytes / best / 1e6


def h2d_peak_gbps(device: torch.device, recalibrate: bool = False) -> float:
    """The copy engine's peak host-to-device GB/s on this machine, measured once and cached under
    $MOELAB_CACHE/costs/; NaN on a CPU (nothing is copied there)."""
    if device.type != "cuda":
        return float("nan")
    key = h2d_key(device)
    path = cache_dir() / f"h2d-{hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = H2D_BYTES if free > 4 * H2D_BYTES else 64 * 2**20  # a full device gets a smaller copy
    if path.exists() and not recalibrate:
        cached = json.loads(path.read_text())
        if int(cached.get("nbytes", 0)) >= nbytes:  # one measured with less room is measured again when it can
            return float(cached["gbps"])
    gbps = measure_h2d_gbps(device, nbytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "gbps": gbps, "nbytes": nbytes}, indent=1))
    tmp.replace(path)
    return gbps
