"""Checks of a run's values that no component checks itself, run before any weight is read.

Each check is a function registered for a stage: `config` checks see the resolved config alone; `planned`
checks also see the built components and the model's shape (known from its config, before its weights load).
A check raises `ConfigError` with one line naming the value and the allowed ones. Adding a check = one
decorated function here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from moelab.core.errors import ConfigError
from moelab.core.types import ModelSpec

CHECKS: dict[str, list[Callable[..., None]]] = {"config": [], "planned": []}
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MISSING = "???"
# what to type for a value a config group leaves to the user
MISSING_HINTS = {
    "model.path": "model=hf needs model.path=/path/to/checkpoint (a local Hugging Face model folder)",
    "routing.trace": "routing=replay needs routing.trace=results/<experiment>/<run_id>/trace.parquet "
                     "(record one with record_trace=true)",
}
BOOL_KEYS = ("progress", "record_trace", "record_states")


def check(stage: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def add(fn: Callable[..., None]) -> Callable[..., None]:
        CHECKS[stage].append(fn)
        return fn

    return add


def check_config(c: Mapping[str, Any]) -> None:
    """Every `config` check on the resolved config `c`."""
    for fn in CHECKS["config"]:
        fn(c)


def check_planned(c: Mapping[str, Any], comps: Any, spec: ModelSpec) -> None:
    """Every `planned` check, once components are built and the model's shape is known."""
    for fn in CHECKS["planned"]:
        fn(c, comps, spec)


def _walk(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, Mapping):
        return [kv for k, v in node.items() for kv in _walk(v, f"{prefix}{k}.")]
    return [(prefix[:-1], node)]


@cache
def top_level_keys() -> frozenset[str]:
    """Keys a run's config may have at the top: conf/config.yaml's own, its config groups, and `rerun`."""
    own = OmegaConf.load(CONF_DIR / "config.yaml")
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    return frozenset({*own.keys(), *groups, "rerun"} - {"defaults", "hydra"})


@check("config")
def no_missing_values(c: Mapping[str, Any]) -> None:
    for key, value in _walk(c):
        if value == MISSING:
            hint = MISSING_HINTS.get(key, f"give it on the command line: {key}=...")
            raise ConfigError(f"{key} is not set; {hint}")


@check("config")
def known_top_level_keys(c: Mapping[str, Any]) -> None:
    unknown = sorted(set(c) - top_level_keys())
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(sorted(top_level_keys()))}")


@check("config")
def seed_is_an_integer(c: Mapping[str, Any]) -> None:
    seed = c.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")


@check("config")
def reference_choice(c: Mapping[str, Any]) -> None:
    ref = c.get("reference", "auto")
    if str(ref).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"unknown reference {ref!r}; allowed: auto, true, false")


@check("config")
def booleans(c: Mapping[str, Any]) -> None:
    for key in BOOL_KEYS:
        if key in c and not isinstance(c[key], bool):
            raise ConfigError(f"{key} must be true or false, got {c[key]!r}")


@check("config")
def cpu_dtype_choice(c: Mapping[str, Any]) -> None:
    from moelab.offload.cpu_worker import parse_cpu_dtype

    parse_cpu_dtype(c.get("cpu_dtype"))


@check("config")
def experiment_name_is_a_folder_name(c: Mapping[str, Any]) -> None:
    name = str(c.get("experiment_name", "default"))
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"experiment_name must be a folder name (no '/'), got {name!r}")


@check("planned")
def prefetch_distance_within_model(c: Mapping[str, Any], comps: Any, spec: ModelSpec) -> None:
    look = comps.prefetch.lookahead
    n = len(spec.moe_layers)
    if look is not None and int(look.distance) >= n:
        allowed = f"1..{n - 1}" if n > 1 else "none (a model with one MoE layer has no later layer to predict)"
        raise ConfigError(f"prefetch.distance={look.distance} but the model has {n} MoE layers, so nothing would "
                          f"be prefetched; allowed: {allowed}")


@check("planned")
def gpu_experts_within_model(c: Mapping[str, Any], comps: Any, spec: ModelSpec) -> None:
    n = (c.get("budget") or {}).get("gpu_experts")
    if isinstance(n, int) and not isinstance(n, bool) and n > spec.total_experts:
        raise ConfigError(f"budget.gpu_experts={n} is more than the model's {spec.total_experts} routed experts; "
                          f"allowed: {spec.top_k}..{spec.total_experts} (budget=full keeps them all on the GPU)")


@check("planned")
def num_prompts_within_workload(c: Mapping[str, Any], comps: Any, spec: ModelSpec) -> None:
    want = (c.get("workload") or {}).get("num_prompts")
    if want is None or comps.routing.replays:  # a replayed trace brings its own prompts
        return
    have = len(comps.workload.prompts)  # what the workload kept: fewer than asked when it has no more
    if int(want) > have:
        raise ConfigError(f"workload.num_prompts={want} but the {comps.workload.name} workload has {have} prompts; "
                          f"allowed: 1..{have}, or null for all")


@check("config")
def trace_needs_the_true_router(c: Mapping[str, Any]) -> None:
    skip = (c.get("execution") or {}).get("true_router") == "skip"
    if skip and c.get("record_trace") is True:
        raise ConfigError("record_trace=true records the true router's choice and logits, which "
                          "execution.true_router=skip does not compute; allowed with record_trace=true: "
                          "execution.true_router=compute")
