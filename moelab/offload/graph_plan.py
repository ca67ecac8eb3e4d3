"""Which executor a run takes: decode steps as CUDA graphs (moelab.offload.graph_executor) or the eager executor.

`execution.graphs=auto` takes the graph path wherever this session's graph executor can carry the run's
decisions, else the eager path with the reason in the row (`graph_note`); `on` refuses, in one line, a run it
cannot carry; `off` is always eager. Decided from the config, the device and the budget: before any weight is
read.

What the graph path carries today: autoregressive decoding of one sequence at a time, on_demand fetching
(prefetch=none) with LRU eviction decided on the device (exact LRU, not a step behind: `decision_lag_steps` 0),
every expert computed on the GPU, native or replayed routing. Everything else is a decision the host makes per
layer (predictors, CPU experts, offline caches, speculative decoding and execution) and runs eagerly until it
has a device form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from moelab.core.errors import ConfigError
from moelab.core.types import Execution
from moelab.offload.gather import triton_available

GRAPH_PREFETCH = ("none",)
GRAPH_CACHES = ("lru",)
GRAPH_BALANCERS = ("gpu_only",)


@dataclass(frozen=True)
class ExecutionPath:
    graphs: bool
    note: str  # why the run is eager (empty on the graph path)

    def row(self) -> dict[str, Any]:
        return {"execution_path": "graph" if self.graphs else "eager", "graph_note": self.note,
                "decision_lag_steps": 0}


def _obstacles(cfg: Mapping[str, Any], execution: Execution, device: torch.device, batch_size: int, capacity: int,
               top_k: int) -> list[str]:
    name = lambda kind: str((cfg.get(kind) or {}).get("name"))  # noqa: E731
    out = []
    if device.type != "cuda":
        out.append(f"device={device.type}: CUDA graphs need a CUDA device")
    elif not triton_available():
        out.append("triton is not installed: the zero-copy gather kernel needs it")
    if name("decoding") != "autoregressive":
        out.append(f"decoding={name('decoding')}: verification passes are not captured yet")
    if batch_size != 1:
        out.append(f"batch size {batch_size}: captured steps run one sequence")
    if name("prefetch") not in GRAPH_PREFETCH:
        out.append(f"prefetch={name('prefetch')}: its predictions are host decisions per layer")
    if name("cache") not in GRAPH_CACHES:
        out.append(f"cache={name('cache')}: the device evicts by LRU only")
    if name("balancer") not in GRAPH_BALANCERS:
        out.append(f"balancer={name('balancer')}: CPU experts are not in the graph path yet")
    if execution.speculates:
        out.append(f"execution.speculative={execution.speculative}: a host decision per layer")
    if cfg.get("record_trace"):
        out.append("record_trace=true: the trace recorder reads every layer on the host")
    if capacity < top_k:
        out.append(f"a budget of {capacity} slots: a captured decode step needs at least top_k={top_k}")
    return out


def choose_path(cfg: Mapping[str, Any], device: torch.device, batch_size: int, capacity: int,
                top_k: int) -> ExecutionPath:
    """The run's execution path; `execution.graphs=on` with an obstacle is a ConfigError naming it."""
    execution = Execution.from_config(cfg.get("execution"))
    mode = execution.graphs
    if mode == "off":
        return ExecutionPath(False, "execution.graphs=off")
    obstacles = _obstacles(cfg, execution, device, batch_size, capacity, top_k)
    if not obstacles:
        return ExecutionPath(True, "")
    if mode == "on":
        allowed = "auto, off" if device.type != "cuda" else "auto (falls back to eager), off"
        raise ConfigError(f"execution.graphs=on cannot capture this run: {obstacles[0]}; allowed here: {allowed}")
    return ExecutionPath(False, "; ".join(obstacles))
