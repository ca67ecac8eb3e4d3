"""policy=spac_released: each rule of MoE-SpAc's released engine pinned to a hand-computed sequence, and the
preset through the real executor (exact output, cached experts on the GPU, misses on the CPU, no demand copy)."""

from __future__ import annotations

import pytest

from moelab.core.errors import ConfigError
from moelab.core.types import ExpertKey, ModelSpec
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.decoding.speculative import SpeculativeDecoding
from moelab.models.plain import PlainModel
from moelab.policies.spac_released import ReleasedSpacEngine
from moelab.policies.utility import UtilityEstimator
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model

SPEC = ModelSpec(moe_layers=(0, 1), num_experts=8, top_k=2, expert_bytes=1, hidden_size=4)
K = ExpertKey


def engine(capacity: int, threshold: int = 1) -> ReleasedSpacEngine:
    e = ReleasedSpacEngine(threshold=threshold)
    e.reset(SPEC, capacity)
    return e


def perform(e: ReleasedSpacEngine) -> list:
    """What the executor does with the engine's decisions: the copies, confirmed one by one."""
    done = e.take_issued()
    for k, _ in done:
        e.inserted(k)
    return done


def test_counter_constants_do_not_scale_with_the_pass():
    est = UtilityEstimator("counter", up=5, down=1)
    est.update(0, {3: 5, 4: 4}, 40)  # 40 tokens in the pass: still +1 at c >= level + 5 (scaled up would be 22)
    assert est.by_layer[0] == {3: 1}
    est.update(0, {3: 6}, 40)  # 6 >= 1 + 5
    est.update(0, {3: 6}, 40)  # 6 < 2 + 5 and 6 > 2 - 1: unchanged
    assert est.by_layer[0][3] == 2
    est.update(0, {3: 1}, 40)  # 1 <= 2 - 1: down one
    assert est.by_layer[0][3] == 1
    for _ in range(9):
        est.update(0, {3: 99}, 40)
    assert est.by_layer[0][3] == 5  # capped at the top level


def test_level_order_held_expert_frozen_layer_and_lowest_level_eviction():
    e = engine(3)
    # pass 1: layer 0 routes experts 1, 2, 3 five tokens each, layer 1 expert 4
    e.layer_start(0, {1: 5, 2: 5, 3: 5})
    assert e.take_issued() == []  # layer 0's levels change only after it ran
    e.layer_start(1, {4: 5})  # layer 0 finished: 1, 2, 3 at level 1, pushed in expert order, free slots
    assert perform(e) == [(K(0, 1), None), (K(0, 2), None), (K(0, 3), None)]
    e.finish_pending()  # step end: (1, 4) at level 1, but every slot is at level 1 >= threshold: it waits
    assert e.take_issued() == [] and e.held == (K(1, 4), 1)
    # pass 2: layer 0 starts: its residents are frozen, the held expert still waits
    e.layer_start(0, {1: 6, 3: 5})
    assert {k: v for k, v in e.slot_level.items()} == {K(0, 1): 6, K(0, 2): 6, K(0, 3): 6}
    assert e.take_issued() == []
    # layer 1 starts: layer 0 unfreezes to level 0; the held (1, 4) evicts the lowest (level, layer, expert),
    # (0, 1), before layer 0's new levels are pushed; then (0, 1) rose to 2 (6 >= 1 + 5), (0, 2) fell to 0,
    # (0, 3) stayed at 1: (0, 1) is popped first and evicts (0, 2) (level 0); (0, 3), resident, is re-levelled
    e.layer_start(1, {4: 5})
    assert e.take_issued() == [(K(1, 4), K(0, 1)), (K(0, 1), K(0, 2))]
    assert e.slot_level == {K(0, 1): 2, K(0, 3): 1, K(1, 4): 1}


def test_a_layer_start_drops_its_queued_front_entries():
    e = engine(2)
    e.layer_start(0, {1: 5, 2: 5, 3: 5})
    e.layer_start(1, {4: 5})  # 1, 2 take the free slots; 3 waits (both slots at level 1)
    assert [k for k, _ in perform(e)] == [K(0, 1), K(0, 2)] and e.held == (K(0, 3), 1)
    e.finish_pending()  # (1, 4) queued behind the held expert
    assert list(e.queue[1]) == [K(1, 4)]
    e.layer_start(0, {})
    assert list(e.queue[1]) == [K(1, 4)]  # not layer 0's: kept
    e.layer_start(1, {})  # layer 1 starts: its queued entry goes; layer 0 ran: the held (0, 3) evicts (0, 1)
    assert e.take_issued() == [(K(0, 3), K(0, 1))]  # kept, (1, 4) would have evicted (0, 2) next
    assert not any(e.queue)


def test_threshold_gates_prefetch_and_eviction():
    e = engine(1, threshold=2)
    e.layer_start(0, {1: 5})
    e.layer_start(1, {})
    assert e.take_issued() == []  # level 1 < threshold 2: never popped
    with pytest.raises(ConfigError, match="threshold"):
        ReleasedSpacEngine(threshold=0)


def test_spac_released_through_the_executor_is_exact_and_splits_by_residency():
    model = tiny_hf_model("mixtral", num_hidden_layers=3)
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256)]
    ref = AutoregressiveDecoding().generate(PlainModel(model, om.device), batches, 6)
    ex = make_executor(om, 6, prefetch="spac_released", cache="spac_released", balancer="residency")
    ex.reset()  # the executor's run context shares the prefetch's engine with the cache
    sd = SpeculativeDecoding(gamma=3, draft={"config": {"hidden_size": 32, "intermediate_size": 64,
                                                        "num_hidden_layers": 1, "num_attention_heads": 2}})
    with om.using(ex):
        out = sd.generate(om, batches, 6)
    assert out.new_tokens == ref.new_tokens
    assert ex.transfers.count["demand"] == 0  # misses run on the CPU, never fetched
    assert ex.counters.cpu_uses > 0 and ex.transfers.count["prefetch"] > 0
    assert set(ex.prefetch.engine.slot_level) == set(ex.pool.table)  # the executor did what the engine decided
    assert ex.cache_policy.engine is ex.prefetch.engine
