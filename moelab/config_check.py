"""Checks of a run's values that no component checks itself, run before any weight is read.

Each check is a function registered for a stage: `config` checks see the resolved config alone (every key typed
and ranged by its owner's schema: moelab/config_schema.py); `planned` checks also see the built components and the
model's plan (its config, shape and tokenizer, known before its weights load).
A check raises `ConfigError` with one line naming the value and the allowed ones. Adding a check = one
decorated function here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

from moelab.config_schema import check_config_types
from moelab.core.errors import ConfigError
from moelab.eval.tasks import EvalOptions

CHECKS: dict[str, list[Callable[..., None]]] = {"config": [], "planned": []}
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MISSING = "???"
# what to type for a value a config group leaves to the user
MISSING_HINTS = {
    "model.path": "model=hf needs model.path=/path/to/checkpoint (a local Hugging Face model folder)",
    "routing.trace": "routing=replay needs routing.trace=results/<experiment>/<run_id>/trace.parquet "
                     "(record one with record_trace=true)",
}


@dataclass
class RunOptions:
    """The schema of a run's top-level keys (conf/config.yaml's own, `policy` that presets set, `+rerun`); the
    config groups' sections are typed by their owners (moelab/config_schema.py)."""

    experiment_name: str = "default"
    results_dir: str = "results"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (moelab.assembly.resolve_device)
    seed: int = 0
    cpu_dtype: str = "native"  # moelab.offload.cpu_worker.parse_cpu_dtype
    reference: Literal["auto", True, False] = "auto"
    progress: bool = True
    label: str | None = None
    record_trace: bool = False
    record_states: bool = False
    eval: EvalOptions = field(default_factory=EvalOptions)
    policy: str | None = None  # the preset's name (conf/policy/*.yaml set it)
    rerun: bool = False  # +rerun=true: run a sweep point that already has an ok row


def check(stage: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def add(fn: Callable[..., None]) -> Callable[..., None]:
        CHECKS[stage].append(fn)
        return fn

    return add


def check_config(c: Mapping[str, Any]) -> None:
    """Every `config` check on the resolved config `c`."""
    for fn in CHECKS["config"]:
        fn(c)


def check_planned(c: Mapping[str, Any], comps: Any, plan: Any) -> None:
    """Every `planned` check, once components are built and the model is planned (a `ModelPlan`: its config,
    shape and checkpoint, no weights)."""
    for fn in CHECKS["planned"]:
        fn(c, comps, plan)


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
def typed_and_ranged(c: Mapping[str, Any]) -> None:
    """Every key against the schema of the code that owns it (moelab/config_schema.py)."""
    check_config_types(c)


@check("config")
def cpu_dtype_choice(c: Mapping[str, Any]) -> None:
    from moelab.offload.cpu_worker import parse_cpu_dtype

    parse_cpu_dtype(c.get("cpu_dtype"))


@check("config")
def experiment_name_is_a_folder_name(c: Mapping[str, Any]) -> None:
    from moelab.results.preflight import check_folder_name

    check_folder_name("experiment_name", str(c.get("experiment_name", "default")))


@check("planned")
def prefetch_distance_within_model(c: Mapping[str, Any], comps: Any, plan: Any) -> None:
    look = comps.prefetch.lookahead
    n = len(plan.spec.moe_layers)
    if look is not None and int(look.distance) >= n:
        allowed = f"1..{n - 1}" if n > 1 else "none (a model with one MoE layer has no later layer to predict)"
        raise ConfigError(f"prefetch.distance={look.distance} but the model has {n} MoE layers, so nothing would "
                          f"be prefetched; allowed: {allowed}")


@check("planned")
def num_prompts_within_workload(c: Mapping[str, Any], comps: Any, plan: Any) -> None:
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


@check("planned")
def batch_within_prompts(c: Mapping[str, Any], comps: Any, plan: Any) -> None:
    if comps.routing.replays:  # a replayed trace brings its own batches
        return
    wl = comps.workload
    if wl.batch_size > len(wl.prompts):
        n = len(wl.prompts)
        raise ConfigError(f"workload.batch_size={wl.batch_size} but the {wl.name} workload has {n} prompt(s), so no "
                          f"batch would be that large; allowed: 1..{n} (or more prompts: workload.num_prompts)")


@check("planned")
def positions_within_model(c: Mapping[str, Any], comps: Any, plan: Any) -> None:
    """Prompt + generation (+ a verification pass's draft tokens) and the perplexity documents fit the model's
    positions: past them a model still computes, silently wrong."""
    limit = getattr(plan.skeleton.config, "max_position_embeddings", None)
    if not limit or comps.routing.replays:  # a replayed trace's prompts and lengths are checked against its own
        return
    from moelab.models.hub import tokenizer_dir
    from moelab.models.tokenizer import load_tokenizer

    wl, limit = comps.workload, int(limit)
    if wl.ppl_docs and wl.ppl_tokens > limit:
        raise ConfigError(f"workload.ppl_tokens={wl.ppl_tokens} is more than the model's {limit} positions "
                          f"(max_position_embeddings); allowed: 0..{limit}")
    tok_dir = tokenizer_dir(plan.source) if plan.source is not None else None
    encode = load_tokenizer(tok_dir, plan.skeleton.config).encode
    longest = max(len(encode(p)) for p in wl.prompts)
    extra = int(comps.decoding.gamma or 0)  # a verification pass feeds the draft's tokens past the last one kept
    need = longest + wl.max_new_tokens + extra
    if need > limit:
        spec = f" + {extra} draft tokens (decoding.gamma)" if extra else ""
        allowed = (f"workload.max_new_tokens <= {limit - longest - extra}" if limit - longest - extra >= 1
                   else f"prompts of at most {limit - 1 - extra} tokens")
        raise ConfigError(f"workload.max_new_tokens={wl.max_new_tokens}: the longest prompt ({longest} tokens) + "
                          f"{wl.max_new_tokens} new tokens{spec} = {need} positions, more than the model's {limit} "
                          f"(max_position_embeddings); allowed: {allowed}")


@check("planned")
def speculation_has_predictions(c: Mapping[str, Any], comps: Any, plan: Any) -> None:
    mode = (c.get("execution") or {}).get("speculative", "none")
    if mode == "router" and not comps.prefetch.predicts:
        raise ConfigError(f"execution.speculative=router runs the predicted experts in place of the router's, but "
                          f"prefetch={c['prefetch']['name']} predicts nothing, so nothing would change; allowed with "
                          "speculative=router: a prefetch policy that predicts (qhs, mlp, ar_binary, spac, oracle, "
                          "...), or execution.speculative=none")
