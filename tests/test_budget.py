"""Budget resolution: which setting wins, and clear errors below one layer's top_k or above free memory."""

import pytest
import torch

from moelab.core.errors import ConfigError
from moelab.core.types import ModelSpec
from moelab.offload.budget import resolve_budget

SPEC = ModelSpec(moe_layers=(0, 1, 2, 3), num_experts=8, top_k=2, expert_bytes=1 << 20, hidden_size=64)
CPU = torch.device("cpu")


def b(**kw):
    cfg = {"gpu_experts": None, "gpu_gib": None, "fraction": None, **kw}
    return resolve_budget(cfg, SPEC, CPU)


def test_precedence_and_values():
    assert b(fraction=0.25).experts == 8
    assert b(gpu_experts=5, fraction=0.25).experts == 5
    assert b(gpu_gib=3 / 1024).experts == 3
    assert b(fraction=1.0).experts == 32
    assert b(gpu_experts=32).experts == b(gpu_gib=32 / 1024).experts == 32


@pytest.mark.parametrize("cfg", [{"gpu_experts": 1000}, {"gpu_gib": 1e12}])
def test_more_than_the_model_has_is_refused_never_clamped(cfg):
    """Every budget key asking for more slots than the model has experts is refused alike, naming the maximum."""
    with pytest.raises(ConfigError) as e:
        b(**cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"budget.{next(iter(cfg))}=" in msg and "2..32 experts" in msg, msg


def test_below_top_k_is_refused_with_the_minimum():
    with pytest.raises(ConfigError) as e:
        b(gpu_experts=1)
    assert "top_k=2" in str(e.value) and "2..32" in str(e.value)


def test_above_free_memory_is_refused():
    spec = ModelSpec((0,), num_experts=1 << 20, top_k=2, expert_bytes=1 << 30, hidden_size=64)
    with pytest.raises(ConfigError) as e:
        resolve_budget({"gpu_experts": 1 << 19}, spec, CPU)
    assert "free" in str(e.value) and "at most" in str(e.value)


@pytest.mark.parametrize("cfg", [{"fraction": 0}, {"fraction": 1.5}, {"gpu_gib": -1}, {"gpu_experts": 2.5},
                                 {"fraction": "half"}, {}, {"gpu_experts": 4, "slots": 3}])
def test_malformed_budgets(cfg):
    with pytest.raises(ConfigError):
        resolve_budget(cfg, SPEC, CPU)
