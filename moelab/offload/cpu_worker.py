"""CpuExpertWorker: experts computed in place from the host copy of their weights (no transfer).

Fiddler's and MoE-SpAc's other path: when moving an expert costs more than running it where it lives,
the CPU runs it. The worker takes the tokens routed to its experts (one device-to-host copy per layer),
computes them on a thread of its own (torch's CPU kernels release the GIL, so the GPU work of the same
layer is issued meanwhile) with the same kernel the GPU path uses, and hands the outputs back to be
weighted and summed exactly as GPU results are. Timings are host wall clock.

`dtype`: the CPU may multiply in float32 from a host copy of bf16 weights (`cpu_dtype=float32`), each
projection rounded to bf16 where the GPU's GEMM rounds: a correctly rounded result instead of whatever the
CPU's bf16 kernels do, and faster on CPUs without native bf16 arithmetic, for twice the host memory of the
experts the CPU runs.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from moelab.core.errors import ConfigError
from moelab.offload.budget import GIB, host_available_bytes
from moelab.offload.kernels import ExpertKernel
from moelab.offload.layer_batch import LayerBatch
from moelab.offload.store import ExpertStore

CPU_DTYPES = {"native": None, "float32": torch.float32}


def parse_cpu_dtype(name: str | None) -> torch.dtype | None:
    """`cpu_dtype`: `native` (the stored dtype; None) or `float32`."""
    key = "native" if name is None else str(name)
    if key not in CPU_DTYPES:
        raise ConfigError(f"unknown cpu_dtype {name!r}; allowed: {', '.join(CPU_DTYPES)}")
    return CPU_DTYPES[key]


@dataclass
class CpuJob:
    layer: int
    experts: list[int]
    rows: torch.Tensor  # the (token, k) rows of these experts in the layer batch, on the compute device
    future: Future
    submitted: float


class CpuExpertWorker:
    def __init__(self, store: ExpertStore, kernels: dict[int, ExpertKernel], threads: int | None = None,
                 dtype: torch.dtype | None = None):
        self.store = store
        self.kernels = kernels
        # OpenMP's thread count is per thread: the worker thread would start with the runtime's default, not the
        # caller's torch.set_num_threads, and a GEMM split over a different number of threads can round
        # differently. The caller's count keeps CPU experts bitwise equal to the plain model on the CPU.
        self.threads = threads or torch.get_num_threads()
        self.act_dtype = store.layout.tensors[0].dtype
        self.dtype = dtype or self.act_dtype
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moelab-cpu-experts")
        self.reset()

    def reset(self) -> None:
        self.busy_ms = 0.0  # time the worker spent computing
        self.wait_ms = 0.0  # time the compute stream's host thread waited for it
        self.tokens = 0

    def prepare(self) -> None:
        """Make every expert's copy in the compute dtype now, untimed, instead of at its first CPU use."""
        if self.dtype == self.act_dtype:
            return
        need, free = self.store.converted_bytes(self.dtype), host_available_bytes()
        if need > free:
            raise ConfigError(f"cpu_dtype={str(self.dtype).removeprefix('torch.')} needs {need / GIB:.1f} GiB of "
                              f"host memory for float copies of the experts, {free / GIB:.1f} GiB is free; "
                              "use cpu_dtype=native (the stored dtype)")
        for layer in self.store.layers:
            for e in range(self.store.num_experts):
                self.store.expert_as(layer, e, self.dtype)

    def compute(self, layer: int, experts: list[int], counts: list[int], x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        torch.set_num_threads(self.threads)
        kernel = self.kernels[layer]
        out = torch.empty(x.shape[0], x.shape[1], dtype=self.act_dtype)
        round_to = self.act_dtype if self.dtype != self.act_dtype else None  # float32 weights: round to bf16
        start = 0
        for e, n in zip(experts, counts):
            w = {name: t.unsqueeze(0) for name, t in self.store.expert_as(layer, e, self.dtype).items()}
            offs = torch.tensor([n], dtype=torch.int32)
            slots = torch.zeros(n, dtype=torch.long) if kernel.has_bias else None
            out[start : start + n] = kernel(x[start : start + n], w, offs, slots, [n], out_dtype=round_to)
            start += n
        self.busy_ms += (time.perf_counter() - t0) * 1e3
        return out

    def submit(self, layer: int, experts: list[int], batch: LayerBatch) -> CpuJob:
        """Start the CPU experts of one layer; `batch` is the executor's layer batch (rows grouped by expert)."""
        idx = torch.cat([torch.arange(*batch.offsets[e]) for e in experts])
        counts = [batch.offsets.count(e) for e in experts]
        rows = idx.to(batch.tensors.device)
        x = batch.tensors.routed[rows].to("cpu")  # waits for the device up to this layer's input
        self.tokens += int(idx.numel())
        fut = self.pool.submit(self.compute, layer, experts, counts, x)
        return CpuJob(layer, experts, rows, fut, time.perf_counter())

    def finish(self, job: CpuJob, batch: LayerBatch) -> None:
        """Wait for the job and put its weighted outputs where the GPU path puts its own."""
        t0 = time.perf_counter()
        y = job.future.result()
        self.wait_ms += (time.perf_counter() - t0) * 1e3
        batch.tensors.scatter(job.rows, y.to(batch.tensors.device, non_blocking=False))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
