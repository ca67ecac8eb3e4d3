"""cache=static (Fiddler's hot set) through the real executor and the runner: exact output, the hot set resident
before the timed pass and kept, preload copies outside the run's transfer counts, a clear error for a bad
`scratch`, and fewer bytes than LRU where routing is skewed."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import hydra
import pandas as pd
import pytest
import torch

from moelab.core import registry
from moelab.core.cost import CostModel
from moelab.core.errors import ConfigError
from moelab.core.types import ExpertKey, RoutingEntry
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.models.plain import PlainModel
from moelab.offload.executor import OffloadExecutor
from moelab.offload.kernels import ExpertKernel
from moelab.routing.trace import read_trace
from moelab.runner import run
from tests.conftest import ROOT, offloaded_copy, random_prompts, tiny_hf_model

DEC = AutoregressiveDecoding()
# 2 MoE layers x 8 experts, top-2: small enough that a whole runner pass takes well under a second
SMALL = ["model.config.hidden_size=64", "model.config.intermediate_size=96", "model.config.num_hidden_layers=2",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "model.config.num_local_experts=8",
         "model.config.vocab_size=256"]


def runner_cfg(tmp_path: Path, *overrides: str):
    with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra.compose("config", overrides=[
            "model=tiny", *SMALL, "device=cpu", f"results_dir={tmp_path / 'results'}", "progress=false",
            "logger.console=false",
            "workload.max_new_tokens=4", "workload.num_prompts=2", "workload.ppl_tokens=8", *overrides])


def static_executor(om, capacity: int, scratch: int | None = None, balancer: str = "gpu_only") -> OffloadExecutor:
    return OffloadExecutor(
        om.store, {layer: ExpertKernel(m) for layer, m in om.hf_experts.items()}, om.spec, capacity, om.device,
        registry.build("prefetch", {"name": "none"}), registry.build("cache", {"name": "static", "scratch": scratch}),
        registry.build("balancer", {"name": balancer}),
    )


def profile_then_preload(om, ex: OffloadExecutor, batches, n: int) -> None:
    """What the runner does for profile=run: a first pass, reset, the routing to the policy, preload."""
    with om.using(ex):
        DEC.generate(om, batches, n)
    routing = list(ex.counters.routing)
    ex.reset()
    ex.bind(ex.context.with_future(routing))
    ex.preload(ex.cache_policy.preload())


@pytest.mark.parametrize("balancer", ["gpu_only", "cpu_cold"])
def test_static_keeps_inference_exact(balancer):
    model = tiny_hf_model("mixtral")  # 2 MoE layers x 8 experts
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256)]
    ref = DEC.generate(PlainModel(model, om.device), batches, 6, keep_logits=True)
    ex = static_executor(om, 6, balancer=balancer)
    if balancer == "cpu_cold":  # a slow link: every cold expert runs on the CPU worker
        ex.bind(replace(ex.context, costs=CostModel(expert_bytes=1, h2d_ms=100.0, gpu=[(1, 0.1), (64, 0.4)],
                                                    cpu=[(1, 0.2), (64, 2.0)])))
    profile_then_preload(om, ex, batches, 6)
    with om.using(ex):
        out = DEC.generate(om, batches, 6, keep_logits=True)
    assert out.new_tokens == ref.new_tokens
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))
    assert len(ex.cache_policy.hot) == 6 - om.spec.top_k
    if balancer == "cpu_cold":
        assert ex.counters.cpu_uses > 0 and ex.transfers.count["demand"] == 0  # hot on the GPU, cold on the CPU


def test_hot_set_is_resident_before_the_pass_and_never_evicted():
    model = tiny_hf_model("mixtral")
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256)]
    # 8 scratch slots hold any layer call's cold experts (8 experts a layer), so no hot expert has to go
    ex = static_executor(om, 12, scratch=8)
    profile_then_preload(om, ex, batches, 6)
    hot = ex.cache_policy.hot
    assert len(hot) == 4 and set(ex.pool.table) == hot  # resident at the start of the timed pass ...
    assert ex.transfers.count == {"demand": 0, "prefetch": 0} and not ex.recorder.timeline.copies  # ... uncounted
    assert all(ex.pool.lookup(k).ready is None for k in hot)
    with om.using(ex):
        DEC.generate(om, batches, 6)
    timeline = ex.finish()
    assert hot <= set(ex.pool.table) and ex.cache_policy.stats()["static_hot_evictions"] == 0
    hot_uses = [u for u in timeline.uses if u.key in hot]
    assert hot_uses and all(u.hit for u in hot_uses)
    assert not any(c.key in hot for c in timeline.copies)  # copied once, before the pass, never again
    assert ex.counters.evictions > 0  # the scratch slots did turn over


def test_run_counts_only_the_timed_pass_copies(tmp_path):
    """A full budget with the default scratch (top_k): every expert the run uses fits, so each cold one is copied
    exactly once and the hot ones never during the run. Bytes in the row = (used - hot) experts; had the preload
    been counted, every used expert would be."""
    row = run(runner_cfg(tmp_path, "cache=static", "balancer=gpu_only", "budget.gpu_experts=16", "record_trace=true"))
    assert row["status"] == "ok" and row["token_agreement"] == 1.0
    _, trace = read_trace(row["trace_path"])
    used = {ExpertKey(int(layer), int(e)) for layer, t in zip(trace.layer, trace.topk) for e in t}
    hot = row["static_hot_experts"]
    assert hot == min(16 - 2, len(used))
    copied = row["h2d_bytes_demand"] + row["h2d_bytes_prefetch"] + row["h2d_bytes_prefill"]
    assert copied == (len(used) - hot) * row["expert_mib"] * 2**20
    assert row["evictions"] == 0 and row["static_hot_evictions"] == 0

    # the same hot set from that run's trace (profile=PATH): no first pass, same copies
    again = run(runner_cfg(tmp_path, "cache=static", "balancer=gpu_only", "budget.gpu_experts=16",
                           f"cache.profile={row['trace_path']}", "reference=false"))
    assert again["static_hot_experts"] == hot
    assert again["h2d_bytes_demand"] + again["h2d_bytes_prefetch"] + again["h2d_bytes_prefill"] == copied
    with pytest.raises(ConfigError, match="MoE layers"):  # a trace of another model is refused, before loading it
        run(runner_cfg(tmp_path, "cache=static", "model.config.num_local_experts=4", "budget.gpu_experts=6",
                       f"cache.profile={row['trace_path']}"))


def test_fiddler_preset_runs_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("MOELAB_CACHE", str(tmp_path / "cache"))
    row = run(runner_cfg(tmp_path, "policy=fiddler", "budget.gpu_experts=6"))
    assert (row["policy"], row["prefetch"], row["cache"], row["balancer"]) == ("fiddler", "none", "static", "cpu_cold")
    assert row["status"] == "ok" and row["token_agreement"] == 1.0 and row["ppl_delta"] == 0.0
    assert row["static_hot_experts"] == 6 - 2
    df = pd.read_parquet(tmp_path / "results" / "default" / "runs.parquet")
    assert "static_hot_evictions" in df.columns


def test_bad_scratch_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"cache.scratch must be an integer >= 1.*got 0"):
        registry.build("cache", {"name": "static", "scratch": 0})
    with pytest.raises(ConfigError, match=r"cache.scratch=6 is out of range .* 6 slots: allowed 1\.\.5"):
        run(runner_cfg(tmp_path, "cache=static", "cache.scratch=6", "budget.gpu_experts=6"))
    with pytest.raises(ConfigError, match=r"cache.scratch=2 \(the default, top_k\) is out of range"):
        run(runner_cfg(tmp_path, "cache=static", "budget.gpu_experts=2"))
    with pytest.raises(ConfigError, match="does not exist"):
        registry.build("cache", {"name": "static", "profile": str(tmp_path / "missing.parquet")})


def skewed_routing(layers, num_experts: int, steps: int, seed: int = 0) -> list[RoutingEntry]:
    """Decode steps of one token, top-2 per layer drawn from a Zipf(1.2) popularity (a different order per layer)."""
    rng = random.Random(seed)
    out = []
    order = {layer: rng.sample(range(num_experts), num_experts) for layer in layers}
    weights = [1 / (i + 1) ** 1.2 for i in range(num_experts)]
    for step in range(steps):
        for layer in layers:
            first = rng.choices(order[layer], weights)[0]
            second = first
            while second == first:
                second = rng.choices(order[layer], weights)[0]
            out.append((step, layer, (first, second)))
    return out


def drive(ex: OffloadExecutor, routing, hidden: torch.Tensor) -> None:
    """Feed the routing to the real executor (real copies, real expert kernels), one decode step at a time."""
    by_step: dict[int, list] = {}
    for step, layer, experts in routing:
        by_step.setdefault(step, []).append((layer, experts))
    for calls in by_step.values():
        ex.begin_step("decode", 1)
        for layer, experts in calls:
            ex.run_layer(layer, hidden, torch.tensor([list(experts)]), torch.tensor([[0.5, 0.5]]))
        ex.end_step()


def test_static_beats_lru_where_routing_is_skewed():
    model = tiny_hf_model("mixtral", num_hidden_layers=3)
    om = offloaded_copy(model)
    routing = skewed_routing(om.spec.moe_layers, om.spec.num_experts, steps=150)
    hidden = torch.randn(1, om.spec.hidden_size)
    capacity = 8  # of 24 experts; 2 scratch slots, a hot set of 6
    lru = OffloadExecutor(om.store, {lay: ExpertKernel(m) for lay, m in om.hf_experts.items()}, om.spec, capacity,
                          om.device, registry.build("prefetch", {"name": "none"}),
                          registry.build("cache", {"name": "lru"}), registry.build("balancer", {"name": "gpu_only"}))
    drive(lru, routing, hidden)
    ex = static_executor(om, capacity)
    ex.bind(ex.context.with_future(routing))  # in-sample profile
    ex.preload(ex.cache_policy.preload())
    drive(ex, routing, hidden)
    hot = ex.cache_policy.hot
    hot_uses = [u for u in ex.finish().uses if u.key in hot]
    assert hot_uses and all(u.kind == "resident" for u in hot_uses)  # the hot set served every one of its uses
    assert ex.cache_policy.stats()["static_hot_evictions"] == 0
    assert ex.transfers.bytes["demand"] < 0.8 * lru.transfers.bytes["demand"]
