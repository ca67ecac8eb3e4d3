"""Experts computed on the CPU worker from host memory: same results as the GPU path (bitwise on a CPU
device), placed by the measured cost model (Fiddler's rule), and the calibration that measures it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moelab.core.cost import CostModel, interpolate
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.models.plain import PlainModel
from moelab.offload.calibrate import cost_model, cost_path, measure
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model

DEC = AutoregressiveDecoding()


def costs(cpu_ms: float, h2d_ms: float = 1.0, gpu_ms: float = 0.1) -> CostModel:
    return CostModel(1, h2d_ms, [(1, gpu_ms), (64, gpu_ms * 4)], [(1, cpu_ms), (64, cpu_ms * 8)])


@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss", "qwen2_moe"])  # plain, biased/clamped, shared expert
def test_cpu_experts_give_the_models_own_output(arch):
    model = tiny_hf_model(arch)
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(3, model.config.vocab_size)]
    ref = DEC.generate(PlainModel(model, om.device), batches, 5, keep_logits=True)
    ex = make_executor(om, om.spec.top_k, balancer="cpu_cold")
    ex.bind(replace(ex.context, costs=costs(cpu_ms=0.01)))  # the CPU always wins: every expert not resident runs there
    with om.using(ex):
        out = DEC.generate(om, batches, 5, keep_logits=True)
    assert out.new_tokens == ref.new_tokens
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))
    assert ex.counters.cpu_uses > 0 and ex.cpu_worker.tokens > 0 and ex.cpu_worker.busy_ms > 0
    # nothing was fetched on demand after the first layer calls filled the slots
    assert ex.transfers.count["demand"] <= om.spec.top_k


def test_cpu_cold_follows_the_cost_model():
    model = tiny_hf_model("mixtral")
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256)]
    slow_cpu = make_executor(om, 4, balancer="cpu_cold")
    slow_cpu.bind(replace(slow_cpu.context, costs=costs(cpu_ms=50.0)))
    with om.using(slow_cpu):
        DEC.generate(om, batches, 4)
    assert slow_cpu.counters.cpu_uses == 0 and slow_cpu.transfers.count["demand"] > 0
    # more tokens make the CPU slower than a fetch: few tokens go to the CPU, a long prefill does not
    mixed = costs(cpu_ms=0.5, h2d_ms=1.0, gpu_ms=0.1)
    assert mixed.cpu_ms(1) < mixed.transfer_ms() + mixed.gpu_ms(1)
    assert mixed.cpu_ms(64) > mixed.transfer_ms() + mixed.gpu_ms(64)


def test_interpolation_and_calibration(tmp_path, monkeypatch):
    pts = [(1, 1.0), (4, 4.0), (16, 10.0)]
    assert interpolate(pts, 2) == 2.0 and interpolate(pts, 10) == 7.0 and interpolate(pts, 32) == 18.0
    monkeypatch.setenv("MOELAB_CACHE", str(tmp_path))
    om = offloaded_copy(tiny_hf_model("mixtral"))
    cm = measure(om, tokens=(1, 8), reps=2)
    assert cm.h2d_ms > 0 and [n for n, _ in cm.gpu] == [1, 8] and all(t > 0 for _, t in cm.cpu)
    assert cm.cpu_fixed_ms > 0  # a trip through the worker thread costs more than the expert's compute alone
    assert cm.expert_bytes == om.store.expert_bytes
    cached = cost_model(om)  # measured and saved on first use, read back after
    assert cost_path(cached.key).exists()
    again = cost_model(om)
    assert again == CostModel.load(cost_path(cached.key))


def test_float32_cpu_experts_round_where_the_native_path_rounds():
    """cpu_dtype=float32 on bf16 experts: multiply in float32 from a kept host copy, round each projection to bf16.
    Equal to the bf16 GEMM computed exactly (float64) and rounded once, i.e. correctly rounded; the copies are
    made by `prepare`, and an unknown cpu_dtype is refused by name."""
    from moelab.core.errors import ConfigError
    from moelab.offload.cpu_worker import CpuExpertWorker, parse_cpu_dtype
    from moelab.offload.kernels import ExpertKernel

    om = offloaded_copy(tiny_hf_model("mixtral").to(torch.bfloat16))
    layer = om.spec.moe_layers[0]
    kernel = ExpertKernel(om.hf_experts[layer])
    worker = CpuExpertWorker(om.store, {layer: kernel}, dtype=parse_cpu_dtype("float32"))
    worker.prepare()
    assert len(om.store._converted) == om.store.num_experts * len(om.store.layers)
    x = torch.randn(5, om.spec.hidden_size).to(torch.bfloat16)
    y = worker.compute(layer, [1], [5], x)
    w = {n: t.double() for n, t in om.store.expert(layer, 1).items()}
    h = (x.double() @ w["gate_up_proj"].t()).to(torch.bfloat16)
    h = kernel.module._apply_gate(h)
    want = (h.double() @ w["down_proj"].t()).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)
    worker.close()
    with pytest.raises(ConfigError, match="'float16'.*native, float32"):
        parse_cpu_dtype("float16")
