"""Per-layer MLP predictors: the state at layer l in, scores of layer l+d's experts out (the `mlp` scorer,
moelab.scorers.mlp, ranks with them).

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

