"""Long-run exactness and stability: thousands of decode steps through the executor at the smallest cache,
with a prefetcher that asks for random experts (evicting, racing demand fetches, wasting copies) and a
balancer that sends part of the experts to the CPU. The output stays bitwise equal to the plain model, no
slot is given away while a layer still needs it (the executor's debug mode asserts it), and host memory is
flat once warm."""

from __future__ import annotations

import os
import random
import time

import pytest
import torch

from moelab.core.context import RunContext
from moelab.core.cost import CostModel
from moelab.core.registry import build
from moelab.core.types import ExpertKey, PrefetchRequest
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.models.plain import PlainModel
from moelab.offload.executor import OffloadExecutor
from moelab.offload.kernels import ExpertKernel
from moelab.policies.base import PrefetchPolicy
from tests.conftest import offloaded_copy, random_prompts, tiny_hf_model

DEC = AutoregressiveDecoding()
ROUNDS, BATCH, NEW_TOKENS = 4, 2, 520  # 4 x 519 = 2,076 decode steps (of 2 sequences each)
RSS_GROWTH_BOUND = 24 * 2**20  # bytes, between the end of the first round and the end of the last


class RandomPrefetch(PrefetchPolicy):
    """After each router decision, asks for 0-3 random experts of random later layers, at random priorities,
    some as ranking hints only: every path of the transfer engine and of victim choice gets exercised."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def on_routing(self, event, cache):
        layers = self.spec.moe_layers
        return [PrefetchRequest(ExpertKey(self.rng.choice(layers), self.rng.randrange(self.spec.num_experts)),
                                priority=self.rng.random(), fetch=self.rng.random() < 0.8)
                for _ in range(self.rng.randrange(4))]


# Fiddler's rule (balancer=cpu_cold) with a stated cost model: an expert with one token runs on the CPU, more are
# fetched
COSTS = CostModel(expert_bytes=1, h2d_ms=1.0, gpu=[(1, 0.1), (64, 0.2)], cpu=[(1, 0.8), (2, 1.5), (64, 40.0)])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def one_thread():
    """Matrices this small take longer to hand to a second thread than to multiply (10x slower on a busy host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_thousands_of_decode_steps_at_the_minimum_cache_stay_exact_and_flat(one_thread):
    plain = tiny_hf_model("mixtral", max_position_embeddings=1024)
    om = offloaded_copy(plain)
    ex = OffloadExecutor(om.store, {layer: ExpertKernel(m) for layer, m in om.hf_experts.items()}, om.spec,
                         om.spec.top_k, om.device, RandomPrefetch(), build("cache", {"name": "lru"}),
                         build("balancer", {"name": "cpu_cold"}), debug=True,
                         context=RunContext(om.spec, om.spec.top_k, COSTS))
    assert ex.slot_guard is not None and ex.capacity == om.spec.top_k  # the smallest cache a layer can run with
    reference = PlainModel(plain, om.device)
    rss, steps, t0 = [], 0, time.time()
    for r in range(ROUNDS):
        batches = [random_prompts(BATCH, plain.config.vocab_size, lengths=(5, 9), seed=10 + r)]
        ref = DEC.generate(reference, batches, NEW_TOKENS, keep_logits=True)
        with om.using(ex):
            out = DEC.generate(om, batches, NEW_TOKENS, keep_logits=True)
        assert out.new_tokens == ref.new_tokens, f"round {r}: tokens differ"
        for step, (a, b) in enumerate(zip(ref.logits, out.logits)):
            assert torch.equal(a, b), f"round {r}: logits differ at step {step}"
        steps += sum(s.phase == "decode" for s in out.steps)
        del ref, out
        rss.append(rss_bytes())
    assert steps >= 2000, steps
    c = ex.counters
    # the run exercised what it claims: evictions, prefetched experts used and wasted, experts on the CPU
    assert c.evictions > 1000 and c.prefetched_used > 100 and c.wasted_bytes > 0 and c.cpu_uses > 100, c
    growth = max(rss) - rss[0]
    assert growth < RSS_GROWTH_BOUND, f"host memory grew {growth / 2**20:.1f} MiB over {steps} steps: {rss}"
    print(f"{steps} decode steps in {time.time() - t0:.1f} s, RSS {[round(x / 2**20) for x in rss]} MiB")
