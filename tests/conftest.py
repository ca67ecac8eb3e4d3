"""Shared helpers: tiny HF models of every supported family, and executors built around them."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread, here and in the `run.py` subprocesses tests start: on a loaded 2-core machine torch's default
# thread count oversubscribes the cores and slows small models by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from moelab.core import registry  # noqa: E402
from moelab.core.types import Execution  # noqa: E402
from moelab.models.build import offload_hf_model  # noqa: E402
from moelab.offload.executor import OffloadExecutor  # noqa: E402
from moelab.offload.kernels import ExpertKernel  # noqa: E402

ARCHS = registry.names("arch")


def tiny_hf_model(arch: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A plain transformers model of `arch`, float32, with non-zero biases so they are exercised."""
    adapter = registry.get("arch", arch)()
    cfg = AutoConfig.for_model(arch, **adapter.tiny_config(**overrides))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "norm" not in name:
                p.normal_(0.0, 0.05)
            if name.endswith("e_score_correction_bias"):
                p.normal_(0.0, 0.05)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.05)
    return model


def offloaded_copy(model: torch.nn.Module):
    return offload_hf_model(copy.deepcopy(model), "cpu")


def make_executor(om, capacity: int, prefetch: str = "none", cache: str = "lru", balancer: str = "gpu_only",
                  **execution):
    """An executor around `om` with registered policies; `execution` keys as in conf/execution/default.yaml."""
    return OffloadExecutor(
        om.store, {layer: ExpertKernel(m) for layer, m in om.hf_experts.items()}, om.spec, capacity, om.device,
        registry.build("prefetch", {"name": prefetch}), registry.build("cache", {"name": cache}),
        registry.build("balancer", {"name": balancer}), execution=Execution(**execution),
    )


def assert_exact_at_budgets(om, plain_model, batches, new_tokens: int, capacities, label: str) -> None:
    """Greedy generation through the executor at each capacity gives the plain model's tokens and bitwise
    logits; below the full budget the cache really evicted."""
    from moelab.decoding.autoregressive import AutoregressiveDecoding
    from moelab.models.plain import PlainModel

    dec = AutoregressiveDecoding()
    ref = dec.generate(PlainModel(plain_model, om.device), batches, new_tokens, keep_logits=True)
    for capacity in capacities:
        ex = make_executor(om, capacity)
        with om.using(ex):
            out = dec.generate(om, batches, new_tokens, keep_logits=True)
        assert out.new_tokens == ref.new_tokens, f"{label} capacity {capacity}: tokens differ"
        for step, (a, b) in enumerate(zip(ref.logits, out.logits)):
            assert torch.equal(a, b), f"{label} capacity {capacity}: logits differ at step {step}"
        if capacity < om.spec.total_experts:  # something had to be fetched twice
            assert ex.counters.evictions > 0


def random_prompts(n: int, vocab: int, lengths=(9, 4, 13), seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


@pytest.fixture
def tmp_results(tmp_path: Path) -> Path:
    return tmp_path / "results"
