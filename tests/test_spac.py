"""MoE-SpAc's parts: the utility estimator's update rules, one utility space for prefetch and eviction, the
balancer's integer optimisation against brute force, and the whole method through the real executor."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace

import pytest

from moelab.core import registry
from moelab.core.context import RunContext
from moelab.core.cost import CostModel
from moelab.core.types import CacheView, ExpertKey, LayerCall, ModelSpec, Placement
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.decoding.speculative import SpeculativeDecoding
from moelab.models.plain import PlainModel
from moelab.observers.spac_signals import SignalComparison
from moelab.policies.balance.spac import best_split_exact, best_split_greedy, split_cost
from moelab.policies.base import run_context
from moelab.policies.utility import UtilityEstimator
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model
from tests.test_cli import run_cli, runs

SPEC = ModelSpec(moe_layers=(0, 1), num_experts=8, top_k=2, expert_bytes=1, hidden_size=4)


def test_counter_utility_rises_slowly_and_falls_with_inertia():
    est = UtilityEstimator("counter", levels=5, up_frac=0.55, down=1)  # 9 tokens a pass: up = 5, as MoE-SpAc's code
    key = ExpertKey(0, 3)
    est.update(0, {3: 9}, 9)
    est.update(0, {3: 9}, 9)
    assert est.utility(key) == pytest.approx(2 / 5)  # +1 per pass at most
    est.update(0, {3: 4}, 9)  # demand 4 vs level 2: neither up (4-2 < 5) nor down (2-4 < 1)
    assert est.utility(key) == pytest.approx(2 / 5)
    est.update(0, {}, 9)
    assert est.utility(key) == pytest.approx(1 / 5)  # one pass without it: down one level, not to zero
    est.update(0, {}, 9)
    assert est.utility(key) == 0 and key not in est.raw


def test_ema_utility():
    est = UtilityEstimator("ema", beta=0.5)
    est.update(1, {2: 4}, 4)
    est.update(1, {2: 2}, 4)
    assert est.utility(ExpertKey(1, 2)) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert [k for _, k in est.ranked()] == [ExpertKey(1, 2)]


@pytest.mark.parametrize("mode", ["counter", "ema"])
def test_top_merge_equals_sorting_every_key(mode):
    """`top` (a merge of per-layer sorted lists, the hot path) ranks exactly as sorting every (layer, expert) by
    utility + layer bonus, ties in `ranked`'s order, would."""
    rng = random.Random(3)
    est = UtilityEstimator(mode, levels=3, beta=0.6)
    layers = [0, 1, 2, 3, 4]
    for _ in range(40):
        layer = rng.choice(layers)
        tokens = rng.randint(1, 9)
        est.update(layer, {rng.randrange(16): rng.randint(1, tokens) for _ in range(rng.randint(0, 5))}, tokens)
        bonus = {lay: 1e-3 * rng.random() for lay in layers}
        for n in (1, 7, 1000):
            for threshold in (0.0, 0.3):
                want = sorted(((u + bonus[k.layer], k) for u, k in est.ranked(threshold)), key=lambda x: -x[0])[:n]
                assert est.top(n, bonus, threshold) == want


def test_prefetch_and_eviction_read_one_utility_space():
    prefetch = registry.build("prefetch", {"name": "spac", "mode": "ema", "beta": 0.0})
    cache = registry.build("cache", {"name": "utility"})
    ctx = run_context(SPEC, 4, prefetch)
    for part in (prefetch, cache):
        part.bind(ctx)
        part.reset()
    assert cache.estimator is prefetch.estimator
    from moelab.core.types import RoutingEvent

    view = CacheView(4)
    reqs = prefetch.on_routing(RoutingEvent(1, 0, "verify", 5, (1, 4), (4, 1)), view)
    assert [r.key for r in reqs] == [ExpertKey(0, 1), ExpertKey(0, 4)]  # by utility 0.8 then 0.2
    for k in (ExpertKey(0, 1), ExpertKey(0, 4), ExpertKey(1, 7)):
        cache.on_insert(k)
    assert cache.victim([ExpertKey(0, 1), ExpertKey(0, 4), ExpertKey(1, 7)]) == ExpertKey(1, 7)  # utility 0
    assert cache.victim([ExpertKey(0, 1), ExpertKey(0, 4)]) == ExpertKey(0, 4)


def _brute(t_res, fetch, cpu, max_fetch, fixed):
    return min(split_cost(g, t_res, fetch, cpu, fixed) for g in itertools.product([False, True], repeat=len(fetch))
               if sum(g) <= max_fetch)


def test_balancer_optimisation_matches_brute_force():
    rng = random.Random(0)
    for i in range(400):
        m = rng.randint(1, 8)
        fetch = [rng.uniform(0.5, 7.0) for _ in range(m)]
        cpu = [rng.uniform(0.1, 12.0) for _ in range(m)]
        t_res, max_fetch = rng.uniform(0, 3), rng.randint(0, m)
        fixed = 0.0 if i % 2 else rng.uniform(0, 6.0)  # the CPU path's cost per layer call that uses it
        util = [rng.random() for _ in range(m)]
        best = _brute(t_res, fetch, cpu, max_fetch, fixed)
        g = best_split_exact(t_res, fetch, cpu, util, max_fetch, fixed)
        assert sum(g) <= max_fetch
        assert split_cost(g, t_res, fetch, cpu, fixed) == pytest.approx(best)
        greedy = best_split_greedy(t_res, fetch, cpu, util, max_fetch, fixed)
        assert sum(greedy) <= max_fetch
        assert split_cost(greedy, t_res, fetch, cpu, fixed) >= best - 1e-9


def test_cpu_path_fixed_cost_keeps_small_experts_on_the_gpu():
    """One missing expert: 1.0 ms on the CPU beats 2.1 ms to fetch and run it, unless using the CPU at all costs
    another 1.5 ms (inputs down, thread, outputs up); both balancers read that from the cost model."""
    view = CacheView(8)
    for name in ("spac", "cpu_cold"):
        bal = registry.build("balancer", {"name": name})
        bal.bind(RunContext(SPEC, 8, CostModel(1, 2.0, [(1, 0.1), (64, 0.4)], [(1, 1.0), (64, 30.0)])))
        bal.reset()
        assert bal.assign(0, [3], [1], view) == {3: Placement.CPU}
        bal.bind(RunContext(SPEC, 8, CostModel(1, 2.0, [(1, 0.1), (64, 0.4)], [(1, 1.0), (64, 30.0)],
                                               cpu_fixed_ms=1.5)))
        assert bal.assign(0, [3], [1], view) == {3: Placement.GPU}


def test_balancer_ties_put_hot_experts_on_the_gpu():
    # two identical missing experts, room to fetch one: the optimum is one each way; utility picks the GPU one
    assert best_split_exact(0.0, [1.0, 1.0], [1.0, 1.0], [0.1, 0.9], 1) == (False, True)


def test_balancer_moves_the_cutoff_with_the_link():
    bal = registry.build("balancer", {"name": "spac"})
    view = CacheView(8)
    fast_link = CostModel(1, 0.5, [(1, 0.1), (64, 0.4)], [(1, 2.0), (64, 20.0)])
    slow_link = CostModel(1, 20.0, [(1, 0.1), (64, 0.4)], [(1, 2.0), (64, 20.0)])
    bal.bind(RunContext(SPEC, 8, fast_link))
    bal.reset()
    assert set(bal.assign(0, [1, 2, 3], [1, 1, 1], view).values()) == {Placement.GPU}
    bal.bind(RunContext(SPEC, 8, slow_link))
    assert set(bal.assign(0, [1, 2, 3], [1, 1, 1], view).values()) == {Placement.CPU}
    bal.bind(RunContext(SPEC, 8, CostModel(1, 2.0, [(1, 0.1), (64, 0.4)], [(1, 2.0), (64, 20.0)])))
    split = bal.assign(0, [1, 2, 3, 4], [1, 1, 1, 1], view)
    assert set(split.values()) == {Placement.GPU, Placement.CPU}  # both paths busy at once


def test_spac_through_the_executor_is_exact_and_uses_both_paths():
    model = tiny_hf_model("mixtral", num_hidden_layers=3)
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(3, 256)]
    ref = AutoregressiveDecoding().generate(PlainModel(model, om.device), batches, 10)
    ex = make_executor(om, 6, prefetch="spac", cache="utility", balancer="spac")
    # the executor's context shares the prefetch's estimator with the cache and the balancer
    ex.bind(replace(ex.context, costs=CostModel(1, 2.0, [(1, 0.1), (64, 0.4)], [(1, 1.5), (64, 30.0)])))
    ex.reset()
    sd = SpeculativeDecoding(gamma=3, draft={"config": {"hidden_size": 32, "intermediate_size": 64,
                                                        "num_hidden_layers": 1, "num_attention_heads": 2}})
    with om.using(ex):
        out = sd.generate(om, batches, 10)
    assert out.new_tokens == ref.new_tokens
    assert ex.counters.cpu_uses > 0 and ex.transfers.count["prefetch"] > 0 and ex.transfers.count["demand"] > 0
    assert ex.observers["prediction_recall"].recall  # the utility prefetch is scored like every predictor


def test_frequency_map_and_binary_signal_are_scored_on_the_same_passes():
    obs = SignalComparison()
    obs.reset()
    # layer 0: pass 1 first token used {1, 2}, whole pass {1, 2, 5 (x3)}; pass 2 used {2, 5}; step 3 is not one
    for step, choice in ((1, (1, 2, 5, 5, 5)), (2, (2, 5)), (3, (2, 3)), (4, (0, 1))):
        obs.on_layer(LayerCall(step, 0, "verify" if step != 3 else "decode", 2, choice, choice, False))
    m = obs.row()
    assert m["signal_binary_recall"] == 0.5 and m["signal_freq_recall"] == 1.0
    assert m["signal_freq_at_k_recall"] == 0.5  # top-2 by count: 5, then 1 (ties by id): only 5 is next
    assert m["signal_freq_precision"] == pytest.approx(2 / 3)
    assert json.loads(m["signal_layers"])["binary_recall"] == {"0": 0.5}


def test_policy_spac_end_to_end(tmp_path):
    p = run_cli(tmp_path, "policy=spac", "decoding.gamma=3", "experiment_name=spac",
                f"+hydra.job.env_set.MOELAB_CACHE={tmp_path / 'cache'}")
    assert p.returncode == 0, p.stderr
    row = runs(tmp_path, "spac").iloc[0]
    assert row.status == "ok" and row.prefetch == "spac" and row.cache == "utility" and row.balancer == "spac"
    assert row.decoding == "speculative" and row.token_agreement == 1.0
    assert row.balancer_calls > 0 and row.balancer_heuristic_calls == 0
    assert row.signal_freq_recall >= row.signal_binary_recall
    assert list((tmp_path / "cache" / "costs").glob("*.json"))  # calibrated once, cached


def test_speculative_trace_replays_into_a_bigger_model(tmp_path):
    """A speculative run's trace keeps its proposal and acceptance lengths: replayed into a full-width random
    model, every verification pass routes as many tokens as the recorded one (so SpAc can be measured at
    real expert sizes with a trained pair's routing and acceptance)."""
    p = run_cli(tmp_path, "decoding=speculative", "decoding.gamma=3", "record_trace=true", "experiment_name=rec",
                "decoding.draft.path=null")
    assert p.returncode == 0, p.stderr
    rec = runs(tmp_path, "rec").iloc[0]
    p = run_cli(tmp_path, "routing=replay", f"routing.trace={rec.trace_path}", "decoding=speculative",
                "experiment_name=rep", "model.config.num_local_experts=32", "model.config.num_hidden_layers=6",
                "balancer=spac", "prefetch=spac", "cache=utility", f"+hydra.job.env_set.MOELAB_CACHE={tmp_path}")
    assert p.returncode == 0, p.stderr
    rep = runs(tmp_path, "rep").iloc[0]
    assert rep.status == "ok" and rep.experts == 32 and rep.layers == 6
    assert rep.acceptance_rate == rec.acceptance_rate and rep.verifications == rec.verifications
    bad = run_cli(tmp_path, "routing=replay", f"routing.trace={rec.trace_path}", "experiment_name=rep")
    assert bad.returncode == 2 and "decoding=speculative" in bad.stderr
