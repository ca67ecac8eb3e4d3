"""Ablations that ablate (issue 29, item 3): every ablation the experiments run changes what it claims to change.

Each test runs the full method and the ablated run through `moelab.runner.run` (a composed config, as
`python run.py` would) and compares what the executor decided: the row's decision counters (evictions, bytes
copied per kind, hits, the CPU's share of expert uses, verification passes) and a log of what ran where, kept by
wrapping the executor for the run (each layer call's GPU compute groups, each CPU submission, grouped kernel
calls, router calls). An ablation whose decisions equal the full method's would be a relabelled copy of it.

The workload is the committed `code_moe` model on its built-in prompts (2 prompts x 8 new tokens, 25% budget),
natively routed; the balancer's cost model is fixed (a 2 ms copy, a CPU expert slower than a GPU one) instead
of measured, so the CPU/GPU split is the same on every machine. Definitions, and the ablations that legitimately
change nothing on some workload, are in docs/SEED_METHODS.md ("Ablations: what each one changes")."""

from __future__ import annotations

import functools
import math
from collections import Counter
from pathlib import Path

import hydra
import pytest
import yaml
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

import moelab.offload.calibrate as calibrate
from moelab.core.cost import CostModel
from moelab.offload.cpu_worker import CpuExpertWorker
from moelab.offload.executor import OffloadExecutor
from moelab.offload.kernels import ExpertKernel
from moelab.runner import run
from tests.conftest import ROOT

EXPERIMENTS = ROOT / "conf" / "experiment"
BASE = ["model=code_moe", "workload=builtin", "workload.num_prompts=2", "workload.max_new_tokens=8",
        "workload.ppl_tokens=0", "budget.fraction=0.25", "device=cpu", "reference=false", "progress=false",
        "logger.console=false"]
# what the executor decided, as the row counts it (NaN-free where defined; compared exactly: the runs are
# deterministic on a CPU once the cost model is fixed)
DECISIONS = ["evictions", "h2d_bytes_demand", "h2d_bytes_prefetch", "h2d_bytes_prefill", "h2d_bytes_wasted",
             "hit_rate", "cpu_share", "verifications"]
# Mixtral-style shapes small enough for the suite (spac_replay/peers run them at 4096 x 14336)
SMALL = ["++model.config.hidden_size=64", "++model.config.intermediate_size=96", "++model.config.vocab_size=1024",
         "++model.config.num_attention_heads=4", "++model.config.num_key_value_heads=2", "model.dtype=float32"]


class Run:
    """A run's row and the log of what its executor did (warm-up and every pass included)."""

    def __init__(self, row: dict, log: dict):
        self.row = row
        self.gpu_groups: list[tuple[int, tuple[int, ...]]] = log["gpu"]  # per compute group: (layer, experts)
        self.cpu_jobs: list[tuple[int, tuple[int, ...]]] = log["cpu"]  # per CPU submission: (layer, experts)
        self.kernel_calls: int = log["kernel"]
        self.router_calls: int = log["router"]

    @property
    def decisions(self) -> dict:
        return {k: self.row[k] for k in DECISIONS if self.row.get(k) is not None
                and not (isinstance(self.row[k], float) and math.isnan(self.row[k]))}

    @property
    def executed(self) -> Counter:
        """Which experts ran, where, how often: the executed routing and placements."""
        return Counter([("gpu", layer, e) for layer, g in self.gpu_groups for e in g]
                       + [("cpu", layer, e) for layer, g in self.cpu_jobs for e in g])

    def differs(self, other: Run) -> list[str]:
        """The counters in which two runs' decisions differ."""
        out = [k for k in DECISIONS if self.decisions.get(k) != other.decisions.get(k)]
        return out + (["executed"] if self.executed != other.executed else [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(*overrides) -> Run, each distinct run once per module."""
    tmp = tmp_path_factory.mktemp("ablations")
    log: dict = {}
    mp = pytest.MonkeyPatch()
    mp.setenv("MOELAB_CACHE", str(tmp / "cache"))
    mp.setattr(calibrate, "measure", lambda om, **kw: CostModel(
        om.store.expert_bytes, 2.0, [(1, 0.1), (64, 0.4)], [(1, 1.5), (64, 30.0)], cpu_fixed_ms=0.1))

    def wrap(cls, name, record):
        original = getattr(cls, name)

        def wrapped(self, *args, **kwargs):
            record(*args)
            return original(self, *args, **kwargs)

        mp.setattr(cls, name, wrapped)

    wrap(OffloadExecutor, "_use_group", lambda layer, group, *_: log["gpu"].append((layer, tuple(group))))
    wrap(CpuExpertWorker, "submit", lambda layer, experts, *_: log["cpu"].append((layer, tuple(experts))))
    wrap(ExpertKernel, "__call__", lambda *_: log.__setitem__("kernel", log["kernel"] + 1))
    wrap(MixtralTopKRouter, "forward", lambda *_: log.__setitem__("router", log["router"] + 1))

    @functools.cache
    def get(*overrides: str) -> Run:
        log.update(gpu=[], cpu=[], kernel=0, router=0)
        with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = hydra.compose("config", overrides=[*BASE, f"results_dir={tmp / 'results'}", *overrides])
        row = run(cfg)
        assert row["status"] == "ok", row.get("error")
        return Run(row, {k: (list(v) if isinstance(v, list) else v) for k, v in log.items()})

    yield get
    mp.undo()


def sweep(experiment: str, key: str) -> list[str]:
    """The values an experiment sweeps `key` over (a glob: every file of the group)."""
    value = str(yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())["hydra"]["sweeper"]["params"][key])
    if value.startswith("glob("):
        group = key.removeprefix("+experiment/")
        return sorted(p.stem for p in (EXPERIMENTS / group).glob("*.yaml"))
    return [v.strip() for v in value.split(",")]


VARIANTS = sorted(set(sweep("spac_ablation", "+experiment/spac_variant")) | set(sweep("spac_replay",
                                                                                     "+experiment/spac_variant")))
SYSTEMS = sorted(p.stem for p in (EXPERIMENTS / "system").glob("*.yaml"))


def variant(name: str) -> tuple[str, ...]:
    return (f"+experiment/spac_variant={name}",)


def test_the_experiments_sweep_the_variants_tested_here():
    assert "spac" in VARIANTS and set(sweep("spac_ablation", "+experiment/spac_variant")) <= set(VARIANTS)
    assert set(sweep("peers", "+experiment/system")) <= set(SYSTEMS)


# --------------------------------------------------------------------------- spac_ablation, spac_replay

# per variant, the counters that must differ from the full method's (others may too)
VARIANT_DIFFERS = {
    "spac_lru": {"evictions", "h2d_bytes_prefetch", "h2d_bytes_wasted"},  # LRU alone picks every victim
    "spac_gpu_only": {"cpu_share", "executed"},  # no CPU compute: every missing expert fetched
    "spac_residency": {"cpu_share", "executed"},  # resident on the GPU, every miss on the CPU
    "spac_g2": {"verifications", "h2d_bytes_demand"},
    "spac_g8": {"h2d_bytes_demand"},  # as many passes as gamma 4 on these 16 tokens, more tokens each
    "sd_on_demand": {"h2d_bytes_prefetch", "cpu_share"},  # no prefetch, no CPU
    "sd_cpu_cold": {"h2d_bytes_prefetch", "cpu_share"},  # no prefetch, Fiddler's CPU rule
    "ar_on_demand": {"verifications", "h2d_bytes_prefetch", "cpu_share"},
    "ar_binary": {"verifications", "cpu_share"},
    "ar_cpu_cold": {"verifications", "h2d_bytes_prefetch"},
}


def test_every_variant_has_an_expectation():
    assert set(VARIANTS) - {"spac"} == set(VARIANT_DIFFERS)


@pytest.mark.parametrize("name", sorted(VARIANT_DIFFERS))
def test_a_spac_variant_decides_differently_from_spac(runs, name):
    full, ablated = runs(*variant("spac")), runs(*variant(name))
    differs = set(ablated.differs(full))
    assert VARIANT_DIFFERS[name] <= differs, (name, differs, full.decisions, ablated.decisions)
    assert full.row["cpu_share"] > 0 and full.row["h2d_bytes_prefetch"] > 0  # the full method uses both parts


@pytest.mark.parametrize("decoding", ["ar", "sd"])
def test_cpu_cold_computes_on_the_cpu_where_on_demand_copies(runs, decoding):
    """The cpu_cold baselines against their on-demand twins: with a copy (2 ms) slower than the CPU computing the
    expert (1.5 ms) cold experts run on the CPU. Where a copy is the faster (the H200 rows of benchmarks/README.md,
    "CPU never chosen") the two are the same run."""
    on_demand, cold = runs(*variant(f"{decoding}_on_demand")), runs(*variant(f"{decoding}_cpu_cold"))
    assert on_demand.row["cpu_share"] == 0 < cold.row["cpu_share"]
    assert {"h2d_bytes_demand", "executed"} <= set(cold.differs(on_demand))


def test_cache_lru_alone_under_plan_aware_eviction_changes_nothing(runs):
    """Why spac_lru sets execution.eviction=policy: under plan_aware the SpAc plan ranks every resident with a
    utility above 0; the cache only chooses among the rest, all at utility 0, where the utility cache breaks ties
    by LRU. So `policy=spac cache=lru` is the same run as `policy=spac` (this workload, and issue 29's)."""
    full, lru = runs("policy=spac"), runs("policy=spac", "cache=lru")
    assert lru.differs(full) == []
    assert lru.row["evictions"] > 0
    assert runs(*variant("spac_lru")).row["eviction"] == "policy"


def test_spac_lru_ablates_at_replayed_mixtral_shapes(runs):
    """spac_replay's setting: the committed gamma-4 trace replayed into 4-layer Mixtral-style shapes."""
    replay = ("+experiment=spac_replay", *SMALL)
    full, lru = runs(*replay, *variant("spac")), runs(*replay, *variant("spac_lru"))
    assert {"evictions", "h2d_bytes_demand"} <= set(lru.differs(full))


# --------------------------------------------------------------------------- peers systems

def test_peers_systems_decide_differently_from_each_other(runs):
    """Each system of conf/experiment/system/ (run here natively on code_moe, with its own decoding) makes its own
    decisions: no two systems' decision counters are equal."""
    got = {s: runs(f"+experiment/system={s}") for s in SYSTEMS}
    for a in SYSTEMS:
        for b in SYSTEMS:
            if a < b:
                assert got[a].differs(got[b]), (a, b, got[a].decisions)
    assert got["fiddler"].row["cpu_share"] > 0 and got["on_demand"].row["cpu_share"] == 0
    assert got["oracle"].row["h2d_bytes_demand"] < got["on_demand"].row["h2d_bytes_demand"]


def test_spec_experts_runs_other_experts_than_gate_prefetch(runs):
    """spec_experts = gate_prefetch + execution.speculative=router: the same predictor, but the predicted experts
    run instead of the router's choice where the two differ."""
    gate, spec = runs("+experiment/system=gate_prefetch"), runs("+experiment/system=spec_experts")
    assert spec.row["spec_exec_changed"] > 0 and math.isnan(gate.row["spec_exec_changed"])
    assert {"executed", "h2d_bytes_demand"} <= set(spec.differs(gate))


# --------------------------------------------------------------------------- execution.* keys

@pytest.mark.parametrize("policy", ["spac", "qhs"])
def test_eviction_policy_changes_the_victims_of_a_prefetching_policy(runs, policy):
    plan_aware, alone = runs(f"policy={policy}"), runs(f"policy={policy}", "execution.eviction=policy")
    assert "evictions" in alone.differs(plan_aware)


def test_eviction_rule_changes_nothing_without_a_prefetch_plan(runs):
    """policy=on_demand has no plan: plan_aware's first choice (the cache's pick among unplanned residents) is
    every choice, so both rules evict the same experts."""
    assert runs("policy=on_demand", "execution.eviction=policy").differs(runs("policy=on_demand")) == []


def test_compute_order_router_computes_each_layer_in_one_group(runs):
    """compute_order=router waits for every missing expert, then computes the layer once; resident_first computes
    the resident experts first (hiding the fetches), then the fetched ones. Same victims and bytes at this budget
    (on a CPU copies are synchronous, so the overlap it removes is nil here too); the compute schedule differs."""
    first, router = runs("policy=on_demand"), runs("policy=on_demand", "execution.compute_order=router")
    assert router.decisions == first.decisions and router.executed == first.executed
    assert len(router.gpu_groups) < len(first.gpu_groups)


def test_max_slot_gap_changes_kernel_calls_only(runs):
    """max_slot_gap is a kernel-grouping knob: the same decisions, more grouped kernel calls at gap 0."""
    gap8, gap0 = runs("policy=on_demand"), runs("policy=on_demand", "execution.max_slot_gap=0")
    assert gap0.decisions == gap8.decisions and gap0.executed == gap8.executed
    assert gap0.kernel_calls > gap8.kernel_calls


@pytest.mark.parametrize("mode", ["router", "predicted"])
def test_speculative_execution_runs_other_experts(runs, mode):
    exact, spec = runs("policy=qhs"), runs("policy=qhs", f"execution.speculative={mode}")
    assert spec.row["spec_exec_changed"] > 0
    assert {"executed", "h2d_bytes_demand"} <= set(spec.differs(exact))


def test_true_router_skip_saves_router_calls_and_decides_the_same(runs):
    """true_router=skip is a cost ablation: the executed experts and weights are compute's (bitwise), only the
    router matmuls of predicted layers are not run."""
    compute = runs("policy=qhs", "execution.speculative=predicted")
    skip = runs("policy=qhs", "execution.speculative=predicted", "execution.true_router=skip")
    assert skip.decisions == compute.decisions and skip.executed == compute.executed
    assert skip.router_calls < compute.router_calls
    assert skip.row["output_sample"] == compute.row["output_sample"]


def test_the_tested_execution_keys_are_every_key():
    """A new execution.* key needs a test here (graphs: CUDA only, see docs/SEED_METHODS.md)."""
    keys = set(yaml.safe_load(Path(ROOT / "conf" / "execution" / "default.yaml").read_text()))
    assert keys == {"eviction", "compute_order", "max_slot_gap", "speculative", "true_router", "graphs"}
