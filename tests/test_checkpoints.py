"""Loading local HF checkpoints: both expert layouts transformers writes, dtype conversion, and the
errors a user gets for a bad directory or corrupted weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from moelab.core.errors import CheckpointError, ConfigError
from moelab.models.build import materialize, plan_model
from moelab.models.checkpoint import index_checkpoint
from tests.conftest import ARCHS, random_prompts, tiny_hf_model

CPU = torch.device("cpu")


def _load(path, **kw):
    cfg = {"path": str(path), "dtype": "float32", **kw}
    return materialize(plan_model(cfg, CPU), CPU)


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_checkpoint_loads_exactly(arch, tmp_path):
    """save_pretrained (per-expert tensors, or fused for GPT-OSS) -> moelab -> same logits as the original."""
    model = tiny_hf_model(arch)
    model.save_pretrained(tmp_path, max_shard_size="20KB")  # several shards
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    om = _load(tmp_path)
    x = torch.tensor([random_prompts(1, model.config.vocab_size)[0]])
    assert torch.equal(model(x).logits, om.model(x).logits)
    assert om.store.total_bytes == om.spec.total_experts * om.spec.expert_bytes


def test_checkpoint_dtype_is_converted(tmp_path):
    model = tiny_hf_model("mixtral")
    model.save_pretrained(tmp_path)
    om = _load(tmp_path, dtype="bfloat16")
    ref = model.to(torch.bfloat16)
    x = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(ref(x).logits, om.model(x).logits)


def test_num_layers_override_drops_later_layers(tmp_path):
    model = tiny_hf_model("qwen3_moe", num_hidden_layers=3)
    model.save_pretrained(tmp_path)
    om = _load(tmp_path, num_layers=2)
    assert om.spec.moe_layers == (0, 1) and len(om.model.model.layers) == 2


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        plan_model({"path": str(tmp_path / "nope")}, CPU)


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        plan_model({"path": str(tmp_path)}, CPU)


def test_dense_model_is_not_an_moe_checkpoint(tmp_path):
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as e:
        plan_model({"path": str(tmp_path)}, CPU)
    assert "'llama'" in str(e.value) and "mixtral" in str(e.value) and "qwen3_moe" in str(e.value)


def _saved(tmp_path):
    tiny_hf_model("olmoe").save_pretrained(tmp_path)
    return next(tmp_path.glob("*.safetensors"))


def test_truncated_safetensors(tmp_path):
    f = _saved(tmp_path)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted safetensors"):
        _load(tmp_path)


def test_garbage_header(tmp_path):
    f = _saved(tmp_path)
    data = bytearray(f.read_bytes())
    data[8:40] = b"\x00garbage, not json at all......."
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted safetensors"):
        index_checkpoint(tmp_path)


def test_missing_expert_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    f = _saved(tmp_path)
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="layer 1, expert 3"):
        _load(tmp_path)


def test_config_that_does_not_match_the_weights(tmp_path):
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        _load(tmp_path)
