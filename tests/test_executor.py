"""The executor's own behaviour, driven with hand-made routing: the math of one layer against a manual
computation, LRU victims, hit/miss and byte accounting, waves when a layer needs more experts than
slots, the sync-free path for resident layers, and the prefetch queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moelab.core.types import ExpertKey, PrefetchRequest
from moelab.policies.base import PrefetchPolicy
from tests.conftest import make_executor, offloaded_copy, tiny_hf_model


def manual_layer(om, layer, x, idx, w):
    """sum_k w[t,k] * FFN_{idx[t,k]}(x[t]) straight from the store (Mixtral SwiGLU)."""
    out = torch.zeros_like(x)
    store = om.store.layer_tensors(layer)
    for t in range(x.shape[0]):
        for k in range(idx.shape[1]):
            e = int(idx[t, k])
            gate, up = F.linear(x[t], store["gate_up_proj"][e]).chunk(2)
            out[t] += w[t, k] * F.linear(F.silu(gate) * up, store["down_proj"][e])
    return out


def setup(capacity=2, experts=8, **policies):
    om = offloaded_copy(tiny_hf_model("mixtral", num_local_experts=experts, num_hidden_layers=2))
    ex = make_executor(om, capacity, **policies)
    return om, ex


def layer_call(ex, layer, experts_per_token, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(experts_per_token)
    x = torch.randn(idx.shape[0], 64, generator=g)
    w = torch.rand(idx.shape, generator=g)
    ex.begin_step("decode", idx.shape[0])
    y = ex.run_layer(layer, x, idx, w)
    ex.end_step()
    return x, idx, w, y


def test_layer_output_matches_manual_computation_even_in_waves():
    om, ex = setup(capacity=2)
    # 4 tokens needing 6 distinct experts with only 2 slots: computed in 3 waves
    x, idx, w, y = layer_call(ex, 0, [[0, 5], [3, 1], [5, 2], [7, 0]])
    torch.testing.assert_close(y, manual_layer(om, 0, x, idx, w), rtol=1e-5, atol=1e-6)
    assert ex.transfers.count["demand"] == 6


def test_lru_victims_and_hit_accounting():
    om, ex = setup(capacity=4)
    for step_experts in ([0, 1], [2, 3], [0, 4], [1, 5]):
        layer_call(ex, 0, [step_experts])
    # after [0,1] [2,3]: full. [0,4]: 0 hits; 4 evicts LRU=1. [1,5]: 1 misses (evicts 2), 5 misses (evicts 3)
    assert set(ex.pool.table) == {ExpertKey(0, e) for e in (0, 4, 1, 5)}
    tl = ex.finish()
    assert sum(u.hit for u in tl.uses) == 1 and len(tl.uses) == 8
    assert ex.transfers.count["demand"] == 7
    assert ex.transfers.bytes["demand"] == 7 * om.spec.expert_bytes
    assert sum(c.nbytes for c in tl.copies) == 7 * om.spec.expert_bytes


def test_resident_layer_moves_nothing():
    om, ex = setup(capacity=16)
    layer_call(ex, 0, [[e, (e + 1) % 8] for e in range(8)])  # loads all 8 experts of layer 0
    copies = ex.transfers.count["demand"]
    x, idx, w, y = layer_call(ex, 0, [[3, 6], [6, 3]], seed=1)
    tl = ex.finish()
    assert ex.transfers.count["demand"] == copies == 8
    assert ex.counters.routing[-1][1:] == (0, (3, 6))
    assert all(u.hit for u in tl.uses if u.step == 1)
    torch.testing.assert_close(y, manual_layer(om, 0, x, idx, w), rtol=1e-5, atol=1e-6)


def test_slot_segments():
    from moelab.offload.executor import slot_segments

    assert slot_segments([0, 1, 5, 30, 31, 60], max_gap=8) == [[0, 1, 5], [30, 31], [60]]
    assert slot_segments([], max_gap=8) == []


class FixedPrefetch(PrefetchPolicy):
    """A real policy for the test: after each step, ask for the given experts of layer 0."""

    def __init__(self, experts):
        self.experts = experts

    def on_step_end(self, step, cache):
        return [PrefetchRequest(ExpertKey(0, e), priority=-i) for i, e in enumerate(self.experts)]


def test_prefetch_queue_fills_slots_and_counts_use_and_waste():
    om, ex = setup(capacity=4)
    ex.prefetch = FixedPrefetch([6, 7])
    ex.bind(ex.context)
    ex.reset()
    layer_call(ex, 0, [[0, 1]])  # demand 0, 1; at the step's end prefetch 6, 7 into the free slots
    assert {ExpertKey(0, e) for e in (0, 1, 6, 7)} == set(ex.pool.table)
    assert ex.transfers.count == {"demand": 2, "prefetch": 2}
    x, idx, w, y = layer_call(ex, 0, [[6, 0]])  # 6 was prefetched: a hit, and a prefetched use
    torch.testing.assert_close(y, manual_layer(om, 0, x, idx, w), rtol=1e-5, atol=1e-6)
    ex.prefetch.experts = [2]  # a full cache: the prefetch of 2 evicts the least recently used expert, 1
    layer_call(ex, 0, [[6, 0]])
    assert set(ex.pool.table) == {ExpertKey(0, e) for e in (0, 2, 6, 7)}
    tl = ex.finish()
    step1 = [u for u in tl.uses if u.step == 1]
    assert all(u.hit for u in step1) and sum(u.first_prefetched_use for u in step1) == 1
    assert ex.counters.prefetched_used == 1 and ex.counters.evictions == 1
    # wasted: 7 and 2, prefetched and never used before the run ended
    assert ex.counters.wasted_bytes == 2 * om.spec.expert_bytes


def test_reset_forgets_everything():
    om, ex = setup(capacity=4)
    layer_call(ex, 0, [[0, 1]])
    ex.reset()
    assert not ex.pool.table and ex.transfers.count["demand"] == 0 and not ex.counters.routing
