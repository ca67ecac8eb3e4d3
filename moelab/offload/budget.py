"""GPU expert budget: how many expert slots a run gets, checked against the model and the device."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from moelab.config_schema import Count, Fraction, Positive
from moelab.core.errors import ConfigError
from moelab.core.types import ModelSpec

GIB = 2**30


@dataclass(frozen=True)
class BudgetOptions:
    """The schema of `budget.*` (conf/budget/*.yaml), read by `resolve_budget`: the first one set wins. Each is
    refused when it asks for more than the model has, never clamped."""

    gpu_experts: Count | None = None  # expert slots
    gpu_gib: Positive | None = None  # GiB of expert slots
    fraction: Fraction | None = None  # of all routed experts
    name: str | None = None


@dataclass(frozen=True)
class Budget:
    experts: int
    requested: str  # what the config asked for, for the results row

    def row(self, spec: ModelSpec) -> dict[str, Any]:
        return {
            "budget_experts": self.experts,
            "budget_gib": self.experts * spec.expert_bytes / GIB,
            "budget_fraction": self.experts / spec.total_experts,
            "budget_requested": self.requested,
        }


def free_device_bytes(device: torch.device) -> int:
    """Memory the cache can still take on `device` (host MemAvailable for a CPU device). On a GPU, memory torch's
    caching allocator holds but no tensor uses counts as free: an earlier run's cache or the un-offloaded
    reference, released in the same process (a sweep), is reused by the next allocation."""
    if device.type == "cuda":
        gc.collect()  # executors of finished runs can sit in reference cycles, holding their slot pools
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return host_available_bytes()


def host_available_bytes() -> int:
    """MemAvailable of the host (what a new allocation can take without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def resolve_budget(cfg: Mapping[str, Any], spec: ModelSpec, device: torch.device, reserve_gib: float = 0.0) -> Budget:
    """Slots from `gpu_experts`, else `gpu_gib`, else `fraction` (of all routed experts), first one set wins."""
    unknown = set(cfg) - {"gpu_experts", "fraction", "gpu_gib", "name"}
    if unknown:
        raise ConfigError(
            f"budget has no setting(s) {', '.join(sorted(unknown))}; allowed: gpu_experts, fraction, gpu_gib"
        )
    given = [(k, cfg[k]) for k in ("gpu_experts", "gpu_gib", "fraction") if cfg.get(k) is not None]
    if not given:
        raise ConfigError("budget needs one of budget.gpu_experts, budget.gpu_gib or budget.fraction")
    key, value = given[0]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"budget.{key} must be a number, got {value!r}")
    total = spec.total_experts
    if key == "gpu_experts":
        if int(value) != value:
            raise ConfigError(f"budget.gpu_experts must be an integer, got {value}")
        n = int(value)
    elif key == "fraction":
        if not 0 < float(value) <= 1:
            raise ConfigError(f"budget.fraction must be in (0, 1], got {value}")
        n = max(1, round(float(value) * total))
    else:
        if float(value) <= 0:
            raise ConfigError(f"budget.gpu_gib must be > 0, got {value}")
        n = int(float(value) * GIB // spec.expert_bytes)
    if n < spec.top_k:
        raise ConfigError(
            f"budget {key}={value} gives {n} expert slot(s), below what one layer needs: "
            f"top_k={spec.top_k} (allowed: {spec.top_k}..{total} experts, "
            f"i.e. fraction >= {spec.top_k / total:.4f} or gpu_gib >= {spec.top_k * spec.expert_bytes / GIB:.3f})"
        )
    if n > total:  # refused, as every budget key is: the run would not have the cache it asked for
        gib = total * spec.expert_bytes / GIB
        raise ConfigError(
            f"budget.{key}={value} is {n} expert slots, more than the model's {total} routed experts ({gib:.3g} GiB); "
            f"allowed: {spec.top_k}..{total} experts (gpu_gib <= {gib:.3g}; budget=full keeps them all on the GPU)"
        )
    need = n * spec.expert_bytes
    free = free_device_bytes(device) - int(reserve_gib * GIB)
    if need > free:
        raise ConfigError(
            f"budget {key}={value} needs {need / GIB:.2f} GiB for {n} expert slots but only {max(free, 0) / GIB:.2f} "
            f"GiB of {device.type} memory is free; allowed: at most {max(free, 0) // spec.expert_bytes} experts"
        )
    return Budget(n, f"{key}={value}")
