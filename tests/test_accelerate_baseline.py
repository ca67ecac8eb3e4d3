"""The HF accelerate offload baseline runs moelab's own weights: on the `tiny` model, with accelerate
really offloading (to disk on this CPU-only machine, or every module streamed from a CPU state dict as on
the GPU), it generates exactly the reference model's tokens and logits, also under a replayed trace;
without accelerate it fails with a one-line install hint."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
import yaml

from moelab.baselines import accelerate_model, placement, plain_copy
from moelab.baselines.accelerate_offload import model_bytes
from moelab.core.errors import MissingDependencyError, MoelabError
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.models.build import materialize, plan_model
from moelab.models.plain import PlainModel
from moelab.routing.native import NativeRouting
from moelab.routing.replay import ReplayRouting
from tests.conftest import ARCHS, ROOT, offloaded_copy, random_prompts, tiny_hf_model
from tests.test_routing import record

CPU = torch.device("cpu")
MIB = 2**20
DEC = AutoregressiveDecoding()


@pytest.fixture(scope="module")
def om():
    cfg = yaml.safe_load((ROOT / "conf" / "model" / "tiny.yaml").read_text())
    return materialize(plan_model({**cfg, "dtype": "float32"}, CPU), CPU)


def layer_bytes(om) -> int:
    return om.spec.num_experts * om.spec.expert_bytes


def same(a, b) -> bool:
    return a.new_tokens == b.new_tokens and len(a.logits) == len(b.logits) and all(
        torch.equal(x, y) for x, y in zip(a.logits, b.logits))


@pytest.mark.parametrize("where", ["disk", "cpu_state_dict", "resident"])
def test_accelerate_model_generates_exactly_the_reference(om, tmp_path, where):
    batches = [[p] for p in random_prompts(2, om.config.vocab_size, lengths=(7, 4))]
    batches.append(random_prompts(2, om.config.vocab_size, lengths=(5, 9), seed=3))  # padded batch of two
    ref = DEC.generate(om, batches, 5, keep_logits=True)  # om's reference backend: the un-offloaded model
    if where == "disk":  # room for two decoder layers: one stays, one is kept free for loading the offloaded
        pm = accelerate_model(om, 2 * layer_bytes(om) + 4 * MIB, CPU, NativeRouting(), offload_folder=tmp_path)
        where_to = set(pm.model.hf_device_map.values())
        assert where_to == {"cpu", "disk"}, pm.model.hf_device_map
        pl = placement(pm)
        assert pl.disk_bytes >= 2 * layer_bytes(om) and pl.streamed_bytes == pl.disk_bytes
        disk_entries = [k for k, d in pm.model.hf_device_map.items() if d == "disk"]
        assert pl.offloaded_modules > 0 and 0 < pl.offloaded_entries <= len(disk_entries)
        assert any(t.is_meta for t in pm.model.parameters())  # really not resident between calls
    elif where == "cpu_state_dict":  # what "cpu" entries get on the GPU: weights loaded at every call
        from accelerate import cpu_offload

        pm = PlainModel(cpu_offload(plain_copy(om), execution_device=CPU), CPU, tokenizer=om.tokenizer)
        assert all(t.is_meta for t in pm.model.parameters())
    else:  # everything fits: accelerate leaves the model as it is; the experts alias the store
        pm = accelerate_model(om, 10**12, CPU, share_experts=True)
        pl = placement(pm)
        assert pl.offloaded_modules == 0 and pl.disk_bytes == 0 and pl.cpu_bytes >= om.store.total_bytes
        first = om.spec.moe_layers[0]
        experts = om.adapter.moe_blocks(pm.model)[first].experts
        assert experts.down_proj.data_ptr() == om.store.layer_tensors(first)["down_proj"].data_ptr()
    out = DEC.generate(pm, batches, 5, keep_logits=True)
    assert same(out, ref)


@pytest.mark.parametrize("arch,overrides", [(a, {}) for a in ARCHS] + [("qwen3_moe", {"tie_word_embeddings": True})],
                         ids=[*ARCHS, "qwen3_moe-tied"])
def test_every_architecture_with_half_its_bytes_on_disk(arch, overrides, tmp_path):
    """Shared experts, expert biases, routing-bias buffers and tied embeddings all come across."""
    om = offloaded_copy(tiny_hf_model(arch, **overrides))
    batches = [[p] for p in random_prompts(2, om.config.vocab_size)]
    ref = DEC.generate(om, batches, 4, keep_logits=True)
    half = (model_bytes(om.model) + om.store.total_bytes) // 2  # om.model holds the non-expert weights alone
    pm = accelerate_model(om, half, CPU, offload_folder=tmp_path)
    assert "disk" in pm.model.hf_device_map.values() and placement(pm).disk_bytes > 0
    assert same(DEC.generate(pm, batches, 4, keep_logits=True), ref)


def test_replayed_routing_is_the_same_in_both(om, tmp_path):
    _, _, path = record(tmp_path, arch="mixtral", layers=4, num_local_experts=16)  # same E and k: its weights too
    replay = ReplayRouting(str(path))
    batches, new_tokens = replay.workload(int(om.config.vocab_size))
    with om.using(replay.wrap(om.reference, om)):
        ref = DEC.generate(om, batches, new_tokens, keep_logits=True)
    pm = accelerate_model(om, 2 * layer_bytes(om) + 4 * MIB, CPU, replay, offload_folder=tmp_path / "offload")
    assert "disk" in pm.model.hf_device_map.values()
    out = DEC.generate(pm, batches, new_tokens, keep_logits=True)
    assert same(out, ref)
    assert pm.backend.cursor == len(replay.steps) - 1  # the loop moved the trace's cursor once per step
    native = DEC.generate(om, batches, new_tokens, keep_logits=True)
    assert not same(native, out)  # the trace's routing was really used
    pm.backend.reset()  # a second pass (after a warm-up, say) replays from the start
    assert same(DEC.generate(pm, batches, new_tokens, keep_logits=True), ref)


def test_missing_accelerate_is_a_clear_error(om, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` now fails
    with pytest.raises(MissingDependencyError, match=r"accelerate.*pip install -e \"\.\[peers\]\"") as e:
        accelerate_model(om, 10**9, CPU)
    assert isinstance(e.value, MoelabError) and isinstance(e.value, ImportError)
    for name in ("moelab.baselines", "moelab.baselines.accelerate_offload"):
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module("moelab.baselines")  # the package itself imports without accelerate
