"""Model building: full-size presets planned from config alone (no weights), deterministic random
init, layer-count overrides, and expert loading without a second copy in pageable memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from moelab.core.errors import ConfigError
from moelab.models.build import materialize, plan_model
from tests.conftest import ROOT

CPU = torch.device("cpu")
MIB = 2**20


def preset(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())


# expert sizes of the real models (HARDWARE.md): bf16 gate+up+down (+ biases for GPT-OSS)
@pytest.mark.parametrize("name,expert_mib,experts,top_k,moe_layers", [
    ("mixtral", 336.0, 8, 2, 32),
    ("qwen3_moe", 9.0, 128, 8, 48),
    ("qwen2_moe", 16.5, 60, 4, 24),
    ("olmoe", 12.0, 64, 8, 16),
    ("deepseek_v2_lite", 16.5, 64, 6, 26),
    ("gpt_oss", 47.5, 32, 4, 24),
    ("phimoe", 150.0, 16, 2, 32),
])
def test_full_size_presets_are_planned_without_weights(name, expert_mib, experts, top_k, moe_layers):
    cfg = {**preset(name), "random_init": True, "num_layers": None}
    plan = plan_model(cfg, CPU)
    assert plan.spec.expert_bytes / MIB == pytest.approx(expert_mib, abs=0.1)
    assert (plan.spec.num_experts, plan.spec.top_k, len(plan.spec.moe_layers)) == (experts, top_k, moe_layers)
    assert all(p.is_meta for p in plan.skeleton.parameters())


def test_deepseek_v3_preset_layers():
    plan = plan_model({**preset("deepseek_v3"), "random_init": True}, CPU)  # num_layers: 5 with 3 dense layers
    assert plan.spec.moe_layers == (3, 4) and plan.spec.num_experts == 256
    with pytest.raises(ConfigError, match="dense"):
        plan_model({**preset("deepseek_v3"), "random_init": True, "num_layers": 3}, CPU)


def tiny_cfg(seed=0):
    return {"arch": "qwen2_moe", "random_init": True, "tiny": True, "dtype": "float32", "seed": seed}


def test_random_init_is_deterministic_per_seed():
    a, b, c = (materialize(plan_model(tiny_cfg(s), CPU), CPU) for s in (0, 0, 1))
    for layer in a.spec.moe_layers:
        for name, t in a.store.layer_tensors(layer).items():
            assert torch.equal(t, b.store.layer_tensors(layer)[name])
            assert not torch.equal(t, c.store.layer_tensors(layer)[name])
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # the shared expert is an ordinary resident module, the routed ones are not parameters any more
    assert any("shared_expert" in k for k in pa) and not any("experts.gate_up_proj" in k for k in pa)


def test_model_without_path_or_random_init_is_refused():
    with pytest.raises(ConfigError, match="random_init"):
        plan_model({"arch": "mixtral", "tiny": True}, CPU)


def test_invalid_model_config_value():
    with pytest.raises(ConfigError, match="invalid model.config"):
        plan_model({"arch": "mixtral", "random_init": True, "config": {"hidden_size": "big"}}, CPU)


LOAD_SCRIPT = r"""
import resource, sys, torch
sys.path.insert(0, sys.argv[2])
from moelab.models.build import materialize, plan_model
plan = plan_model({"path": sys.argv[1], "dtype": "float32"}, torch.device("cpu"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
om = materialize(plan, torch.device("cpu"))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(om.store.total_bytes, after - before)
"""


def test_experts_load_without_a_second_pageable_copy(tmp_path):
    """Peak memory while loading grows by about the store, not twice the experts."""
    from tests.conftest import tiny_hf_model

    model = tiny_hf_model("mixtral", hidden_size=256, intermediate_size=1024, num_local_experts=16,
                          num_hidden_layers=4, vocab_size=256)
    model.save_pretrained(tmp_path)
    del model
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path), str(ROOT)], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    store, grew = (int(v) for v in out.stdout.split()[-2:])
    assert store >= 190 * MIB
    assert grew < 1.35 * store, f"peak grew {grew / MIB:.0f} MiB for a {store / MIB:.0f} MiB store"


def test_hub_names_of_the_experts_are_understood():
    from moelab.core import registry

    mixtral = registry.get("arch", "mixtral")()
    key = mixtral.rename("model.layers.3.block_sparse_moe.experts.5.w3.weight")
    assert mixtral.expert_key(key) == (3, 5, "gate_up_proj", 1)
    qwen = registry.get("arch", "qwen3_moe")()
    assert qwen.expert_key("model.layers.0.mlp.experts.7.down_proj.weight") == (0, 7, "down_proj", None)
    assert qwen.expert_key("model.layers.2.mlp.experts.gate_up_proj") == (2, None, "gate_up_proj", None)
    assert qwen.expert_key("model.layers.2.mlp.gate.weight") is None


def test_builtin_workload_validation():
    from moelab.workloads.builtin import BuiltinWorkload

    for bad in (dict(max_new_tokens=0), dict(batch_size=0), dict(num_prompts=0), dict(prompts=[]),
                dict(prompts=["ok", ""]), dict(ppl_tokens=-1)):
        with pytest.raises(ConfigError):
            BuiltinWorkload(**bad)
    wl = BuiltinWorkload(num_prompts=3, batch_size=2)
    assert [len(b) for b in wl.batches(lambda s: [1, 2])] == [2, 1]


def test_presets_exist_for_every_adapter():
    from moelab.core import registry

    archs = {yaml.safe_load(p.read_text()).get("arch") for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert set(registry.names("arch")) <= archs


def test_repository_layout():
    for p in ("README.md", "pyproject.toml", "run.py", "conf", "moelab", "experiments", "notebooks", "results",
              "benchmarks", "tests", ".ci/run", "results/README.md", "benchmarks/README.md"):
        assert (ROOT / p).exists(), p
    assert Path(ROOT / ".ci" / "run").read_text().strip()
