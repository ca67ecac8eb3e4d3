"""The graph executor's layer code (device tables, device LRU, zero-copy gather, grouped GEMM over the pool) run
eagerly on the CPU: bitwise the eager executor's and the plain model's numbers, slots never stolen from a pass,
and its step log turned into the same counters the eager executor keeps."""

from __future__ import annotations

import pytest
import torch

from moelab.core import registry
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.decoding.steps import EagerStep, GraphStep, static_length, step_for
from moelab.models.plain import PlainModel
from moelab.offload.gather import gather_experts
from moelab.offload.graph_executor import GraphExecutor
from moelab.offload.kernels import ExpertKernel
from tests.conftest import ARCHS, make_executor, offloaded_copy, random_prompts, tiny_hf_model


def graph_executor(om, capacity: int) -> GraphExecutor:
    return GraphExecutor(
        om.store, {layer: ExpertKernel(m) for layer, m in om.hf_experts.items()}, om.spec, capacity, om.device,
        registry.build("prefetch", {"name": "none"}), registry.build("cache", {"name": "lru"}),
        registry.build("balancer", {"name": "gpu_only"}),
    )


def static_steps(om, batch_size, max_len):
    return GraphStep(om, batch_size, static_length(om, max_len))  # the length step_for gives the executor


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_path_is_bitwise_the_plain_model_at_every_budget(arch):
    """Greedy decoding over a static cache: the graph executor's logits equal the plain model's (same static
    cache) bit for bit, from the smallest budget (top_k slots: long prefills run in parts) to every expert."""
    plain = tiny_hf_model(arch)
    om = offloaded_copy(plain)
    batches = [[p] for p in random_prompts(3, om.config.vocab_size)]
    dec = AutoregressiveDecoding()
    ref = dec.generate(PlainModel(plain, om.device), batches, 6, keep_logits=True, step_factory=static_steps)
    for capacity in sorted({om.spec.top_k, om.spec.total_experts // 2, om.spec.total_experts}):
        ex = graph_executor(om, capacity)
        with om.using(ex):
            out = dec.generate(om, batches, 6, keep_logits=True)
        assert out.new_tokens == ref.new_tokens, f"{arch} capacity {capacity}: tokens differ"
        for step, (a, b) in enumerate(zip(ref.logits, out.logits)):
            assert torch.equal(a, b), f"{arch} capacity {capacity}: logits differ at step {step}"
        if capacity < om.spec.total_experts // 2:
            assert ex.counters.evictions > 0


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_graph_layer_equals_eager_executor_layer(arch):
    """One layer call, same inputs: the graph layer code and the eager executor agree bitwise, for a prefill
    and for a decode token, at a budget that forces misses."""
    om = offloaded_copy(tiny_hf_model(arch))
    layer = om.spec.moe_layers[0]
    E, K = om.spec.num_experts, om.spec.top_k
    torch.manual_seed(3)
    hidden_size = om.config.hidden_size
    for T in (7, 1):
        hidden = torch.randn(T, hidden_size)
        idx = torch.stack([torch.randperm(E)[:K] for _ in range(T)])  # [T, K]
        w = torch.softmax(torch.randn(T, K), -1)  # [T, K]
        eager, graph = make_executor(om, K + 1), graph_executor(om, K + 1)
        a = eager.run_layer(layer, hidden, idx, w)
        b = graph.run_layer(layer, hidden, idx, w)
        assert torch.equal(a, b), f"{arch} T={T}"


def test_misses_take_least_recently_used_slots_never_the_pass_own():
    om = offloaded_copy(tiny_hf_model("mixtral"))
    layer = om.spec.moe_layers[0]
    H = om.config.hidden_size
    ex = graph_executor(om, 3)
    run = lambda experts: ex.run_layer(layer, torch.randn(1, H), torch.tensor([experts]),  # noqa: E731
                                       torch.full((1, len(experts)), 0.5))
    run([0, 1])  # step 1: slots 0, 1
    run([2, 0])  # step 2: 2 takes the free slot 2; 0 is a hit
    run([3, 2])  # step 3: the LRU slot not used by this pass is 1's (last used at step 1)
    resident = {int(k): int(s) for k, s in enumerate(ex.table[:-1].tolist()) if s >= 0}
    assert resident == {0: 0, 3: 1, 2: 2}
    assert ex.owner[:3].tolist() == [0, 3, 2]
    assert ex.counters.evictions == 1
    # every step's log became counters: routing, uses with hits and misses, demand bytes
    assert [r[2] for r in ex.counters.routing] == [(0, 1), (0, 2), (2, 3)]
    assert ex.transfers.count["demand"] == 4
    kinds = [u.kind for u in ex.recorder.resolve().uses]
    assert kinds == ["demand", "demand", "resident", "demand", "resident", "demand"]


def test_gathered_slot_holds_the_expert_weights():
    om = offloaded_copy(tiny_hf_model("qwen3_moe"))
    layer = om.spec.moe_layers[1]
    ex = graph_executor(om, 4)
    H = om.config.hidden_size
    ex.run_layer(layer, torch.randn(2, H), torch.tensor([[5, 1], [1, 7]]), torch.full((2, 2), 0.5))
    for e in (1, 5, 7):
        slot = int(ex.table[ex.layer_index[layer] * om.spec.num_experts + e])
        for name, pool in ex.pool.pools.items():
            assert torch.equal(pool[slot], om.store.layer_tensors(layer)[name][e])


def test_gather_skips_entries_without_an_expert():
    host = torch.arange(5 * 6, dtype=torch.float32).view(5, 6)
    pool = torch.zeros(4, 6)
    gather_experts(pool, host, torch.tensor([2, 3, 0]), torch.tensor([4, -1, 1]))
    assert torch.equal(pool[2], host[4]) and torch.equal(pool[0], host[1])
    assert torch.equal(pool[1], torch.zeros(6)) and torch.equal(pool[3], torch.zeros(6))


def test_reset_keeps_table_tensors_in_place():
    """A captured graph points at the tables: a reset between passes must empty them without reallocating."""
    om = offloaded_copy(tiny_hf_model("olmoe"))
    ex = graph_executor(om, 4)
    ptrs = [t.data_ptr() for t in (ex.table, ex.owner, ex.stamp, ex.step_clock)]
    ex.run_layer(om.spec.moe_layers[0], torch.randn(1, om.config.hidden_size), torch.tensor([[0, 1]]),
                 torch.full((1, 2), 0.5))
    ex.reset()
    assert [t.data_ptr() for t in (ex.table, ex.owner, ex.stamp, ex.step_clock)] == ptrs
    assert int((ex.table >= 0).sum()) == 0 and int(ex.step_clock) == 0


def test_step_for_picks_graph_steps_for_capturing_backends_only():
    om = offloaded_copy(tiny_hf_model("mixtral"))
    assert isinstance(step_for(om, 1, 10), EagerStep)  # the reference backend does not capture
    with om.using(graph_executor(om, 4)):
        step = step_for(om, 1, 10)
        assert isinstance(step, GraphStep) and step.max_len == 64 and not step.capturable  # CPU: eager over it
        assert step_for(om, 1, 30) is step  # one bucket, one step (and one graph on a GPU)
        assert isinstance(step_for(om, 2, 10), EagerStep)  # padded batches keep the eager step


def test_device_replay_runs_the_trace_routing_in_every_pass(tmp_path):
    """routing=replay over the graph executor: the trace comes from device tables with a device cursor; the
    routing run equals the eager replay's, and a second pass (same tables, cursor rewound) runs it again."""
    from moelab.routing.device_replay import DeviceReplayBackend
    from moelab.routing.replay import ReplayRouting
    from tests.test_routing import record

    _, _, path = record(tmp_path, arch="mixtral", num_local_experts=8)
    replay = ReplayRouting(str(path))
    om = offloaded_copy(tiny_hf_model("mixtral", num_local_experts=16, num_hidden_layers=3))
    batches, new_tokens = replay.workload(om.config.vocab_size)
    dec = AutoregressiveDecoding()
    eager = make_executor(om, 6)
    with om.using(replay.wrap(eager, om)):
        ref = dec.generate(om, batches, new_tokens, keep_logits=True)
    graph = graph_executor(om, 6)
    for _ in range(2):
        backend = replay.wrap(graph, om)
        assert isinstance(backend, DeviceReplayBackend)
        with om.using(backend):
            out = dec.generate(om, batches, new_tokens)
        assert out.new_tokens == ref.new_tokens
        assert graph.counters.routing == eager.counters.routing
        graph.reset()


def test_pools_larger_than_one_grouped_gemm_are_computed_in_windows(monkeypatch):
    """torch's grouped GEMM takes at most 1024 groups; a bigger pool (Qwen3-30B-A3B at full budget: 3072 slots)
    is covered in windows. Forced small here: the results stay bitwise the plain model's."""
    import moelab.offload.graph_executor as ge

    monkeypatch.setattr(ge, "MAX_GROUPS", 4)
    plain = tiny_hf_model("qwen2_moe")  # biases and a shared expert
    om = offloaded_copy(plain)
    batches = [[p] for p in random_prompts(2, om.config.vocab_size)]
    dec = AutoregressiveDecoding()
    ref = dec.generate(PlainModel(plain, om.device), batches, 4, keep_logits=True, step_factory=static_steps)
    ex = graph_executor(om, 11)
    with om.using(ex):
        out = dec.generate(om, batches, 4, keep_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))
