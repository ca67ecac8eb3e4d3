"""cache=fifo / lfu / belady: exact output through the real executor, and their eviction order and copy counts
on hand-made routing sequences (one token, top-1: each layer call needs one expert, so the executor's demand
copies are the page faults of the textbook paging problem)."""

from __future__ import annotations

import pytest
import torch

from moelab.core import registry
from moelab.core.errors import ConfigError
from moelab.core.types import ExpertKey
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.metrics.belady import belady_misses
from moelab.models.plain import PlainModel
from moelab.runner import run
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model
from tests.test_static_cache import runner_cfg

DEC = AutoregressiveDecoding()


@pytest.fixture(scope="module")
def top1():
    """One MoE layer of 8 experts, top-1."""
    return offloaded_copy(tiny_hf_model("mixtral", num_hidden_layers=1, num_experts_per_tok=1))


def replay(om, capacity: int, cache: str, seq: list[int], prefetch: str = "none", **params):
    """Each expert of `seq` in a layer call (and forward step) of its own; Belady gets the run's routing from a
    first pass over the same sequence, as the runner gives it."""
    ex = make_executor(om, capacity, prefetch=prefetch)
    ex.cache_policy = registry.build("cache", {"name": cache, **params})
    ex.bind(ex.context)
    ex.reset()
    layer = om.spec.moe_layers[0]
    hidden = torch.randn(1, om.config.hidden_size, generator=torch.Generator().manual_seed(0))
    weight = torch.ones(1, 1)

    def run():
        for e in seq:
            ex.run_layer(layer, hidden, torch.tensor([[e]]), weight)

    if ex.cache_policy.needs_future or ex.prefetch.needs_future:
        run()
        future = list(ex.counters.routing)
        ex.reset()
        ex.bind(ex.context.with_future(future))
    run()
    return ex, {k.expert for k in ex.pool.table}


TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2]  # capacity 3: 7 faults under OPT, 9 under LRU, 10 under FIFO


def test_belady_copies_are_the_optimum_and_at_most_lru(top1):
    ex, _ = replay(top1, 3, "belady", TEXTBOOK)
    assert ex.transfers.count["demand"] == 7 == sum(belady_misses(list(enumerate(TEXTBOOK)), 3).values())
    lru, _ = replay(top1, 3, "lru", TEXTBOOK)
    fifo, _ = replay(top1, 3, "fifo", TEXTBOOK)
    assert lru.transfers.count["demand"] == 9 and fifo.transfers.count["demand"] == 10
    g = torch.Generator().manual_seed(3)
    for cap in (2, 4, 6):
        seq = torch.randint(0, 8, (40,), generator=g).tolist()
        opt = sum(belady_misses(list(enumerate(seq)), cap).values())
        b, _ = replay(top1, cap, "belady", seq)
        lr, _ = replay(top1, cap, "lru", seq)
        assert b.transfers.count["demand"] == opt <= lr.transfers.count["demand"]


def test_belady_under_the_oracle_prefetch_copies_the_optimum(top1):
    # under the oracle's prefetch only the very first expert is fetched on demand, and the copies stay OPT's
    ex, _ = replay(top1, 3, "belady", TEXTBOOK, prefetch="oracle")
    assert ex.transfers.count["demand"] == 1
    assert ex.transfers.count["demand"] + ex.transfers.count["prefetch"] == 7


def test_fifo_evicts_the_first_in_despite_its_use(top1):
    _, fifo = replay(top1, 3, "fifo", [0, 1, 2, 0, 3])
    _, lru = replay(top1, 3, "lru", [0, 1, 2, 0, 3])
    assert fifo == {1, 2, 3}  # 0 came first: it goes although it was just used
    assert lru == {0, 2, 3}  # LRU keeps 0 and drops 1


def test_lfu_evicts_the_least_used_and_decay_forgets(top1):
    seq = [0, 0, 0, 1, 1, 2]
    _, plain = replay(top1, 2, "lfu", seq)
    assert plain == {0, 2}  # counts 0:3, 1:2 -> 1 goes
    _, decayed = replay(top1, 2, "lfu", seq, decay=0.5)
    assert decayed == {1, 2}  # at step 5: 0 has .5^5+.5^4+.5^3 = .22, 1 has .5^2+.5 = .75 -> 0 goes
    _, tie = replay(top1, 2, "lfu", [0, 1, 2])
    assert tie == {1, 2}  # equal counts: the least recently used goes


def test_lfu_rejects_a_bad_decay():
    with pytest.raises(ConfigError, match="decay"):
        registry.build("cache", {"name": "lfu", "decay": 1.5})


@pytest.mark.parametrize("cache", ["fifo", "lfu", "belady", "spac_released"])
def test_new_caches_keep_inference_exact(cache):
    plain = tiny_hf_model("mixtral")
    om = offloaded_copy(plain)
    batches = [[p] for p in random_prompts(2, plain.config.vocab_size)]
    ref = DEC.generate(PlainModel(plain, om.device), batches, 4, keep_logits=True)
    ex = make_executor(om, om.spec.top_k + 1, cache=cache)
    if ex.cache_policy.needs_future:  # the runner's profile pass
        with om.using(ex):
            DEC.generate(om, batches, 4)
        future = list(ex.counters.routing)
        ex.reset()
        ex.bind(ex.context.with_future(future))
    with om.using(ex):
        out = DEC.generate(om, batches, 4, keep_logits=True)
    assert out.new_tokens == ref.new_tokens
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))
    assert ex.counters.evictions > 0
    assert all(isinstance(k, ExpertKey) for k in ex.pool.table)


def test_belady_through_the_runner_copies_no_more_than_lru(tmp_path):
    """The runner gives cache=belady the routing of a first, untimed pass (as it does the oracle's)."""
    rows = {c: run(runner_cfg(tmp_path, f"cache={c}", "budget.gpu_experts=5", "reference=false"))
            for c in ("lru", "belady")}
    copied = {c: r["h2d_bytes_demand"] + r["h2d_bytes_prefill"] for c, r in rows.items()}
    assert all(r["status"] == "ok" for r in rows.values())
    assert copied["belady"] < copied["lru"]
