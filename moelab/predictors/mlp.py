"""Per-layer MLP predictors: the state at layer l in, scores of layer l+d's experts out.

Saved as a folder: `predictor.json` (what they were trained for: model shape, distance, state, the
layers they cover, training facts) and `predictor.safetensors` (`<target>.<param>` tensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from moelab.core.errors import ConfigError
from moelab.models.lookahead import Scorer
from moelab.predictors.files import CONFIG, WEIGHTS, read_predictor_config


class LayerMlp(nn.Module):
    """Normalise (residual streams grow with depth), one hidden layer, one score per expert."""

    def __init__(self, hidden_size: int, width: int, num_experts: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.up = nn.Linear(hidden_size, width)
        self.out = nn.Linear(width, num_experts)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.gelu(self.up(self.norm(h))))


def save_predictors(path: str | Path, models: dict[int, LayerMlp], info: dict[str, Any]) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"{t}.{k}": v.detach().float().cpu().contiguous() for t, m in models.items()
               for k, v in m.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps({**info, "targets": sorted(models)}, indent=1))
    return path


def load_predictors(path: str | Path, device: torch.device, dtype: torch.dtype) -> tuple[dict[int, LayerMlp], dict]:
    info = read_predictor_config(path)
    tensors = load_file(str(Path(path) / WEIGHTS))
    models = {}
    for t in info["targets"]:
        m = LayerMlp(info["hidden_size"], info["width"], info["num_experts"])
        m.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(t)})
        models[int(t)] = m.to(device=device, dtype=dtype).eval()
    return models, info


class MlpScorer:
    """MLPs for the target layers they cover (restricted to `layers` if given), `fallback` for the rest."""

    def __init__(self, models: dict[int, LayerMlp], layers: tuple[int, ...] | None, fallback: Scorer):
        if layers is not None:
            missing = sorted(set(layers) - set(models))
            if missing:
                raise ConfigError(f"prefetch.layers {missing} have no trained MLP; trained target layers: "
                                  f"{sorted(models)}")
        self.models = {t: m for t, m in models.items() if layers is None or t in layers}
        self.fallback = fallback

    def __call__(self, target: int, state: torch.Tensor, k: int) -> torch.Tensor:
        m = self.models.get(target)
        if m is None:
            return self.fallback(target, state, k)
        return m(state).topk(k, dim=-1).indices

    def logits(self, target: int, state: torch.Tensor) -> torch.Tensor:
        """Scores [T, E] that rank layer `target`'s experts (the MLP's, else the fallback's router logits):
        `execution.speculative=predicted` weights the predicted top_k by their softmax."""
        m = self.models.get(target)
        if m is None:
            return self.fallback.logits(target, state)
        return m(state).float()


def mlp_scorer(om: Any, path: str, layers: tuple[int, ...] | None, fallback: Scorer) -> MlpScorer:
    """Load predictors for `om`, checking they were trained for its shape."""
    models, info = load_predictors(path, om.device, om.dtype)
    spec = om.spec
    if info["hidden_size"] != spec.hidden_size or info["num_experts"] != spec.num_experts or \
            not set(models) <= set(spec.moe_layers):
        raise ConfigError(f"the MLP predictors at {path} were trained for hidden {info['hidden_size']}, "
                          f"{info['num_experts']} experts, layers {sorted(models)}; this model has hidden "
                          f"{spec.hidden_size}, {spec.num_experts} experts, MoE layers {list(spec.moe_layers)}")
    return MlpScorer(models, layers, fallback)
