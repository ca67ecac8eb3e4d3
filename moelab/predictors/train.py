"""Learn per-layer MLP predictors from a routing trace recorded with its states.

For each MoE layer l that has a layer l+d: inputs are the post-attention states of layer l's tokens
(`<trace>.states.safetensors`), targets the experts layer l+d's router chose for the same tokens.
Steps with `step % val_every == 0` are held out. The report compares, on those held-out steps, the
MLP's top-k recall with a constant predictor (the k experts most used in training) and with the
router on the quasi-hidden state (qhs, the trace's `pred_d*`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from moelab.core.errors import ConfigError
from moelab.predictors.mlp import LayerMlp
from moelab.routing.trace import read_trace, states_path


@dataclass
class LayerData:
    source: int
    target: int
    x: torch.Tensor  # [N, H] float32
    y: torch.Tensor  # [N, k] target experts
    qhs: torch.Tensor  # [N, k] the router's prediction on the same state (from the trace)
    val: torch.Tensor  # [N] bool, held out


def load_layer_data(trace: str | Path, distance: int, val_every: int) -> tuple[dict[str, Any], list[LayerData]]:
    header, df = read_trace(trace)
    spath = states_path(trace)
    if not spath.is_file():
        raise ConfigError(f"{trace} was recorded without states; record with record_trace=true record_states=true")
    states = load_file(str(spath))
    moe = list(header["moe_layers"])
    k = int(header["top_k"])
    col = f"pred_d{distance}"
    if col not in df:
        raise ConfigError(f"the trace has no {col} (recorded lookahead {header.get('lookahead')})")
    out = []
    by_layer = {layer: g for layer, g in df.groupby("layer", sort=False)}
    for i, source in enumerate(moe[:-distance] if distance < len(moe) else []):
        target = moe[i + distance]
        src, tgt = by_layer[source], by_layer[target]
        if len(src) != len(tgt) or not (src.step.values == tgt.step.values).all() or \
                not (src.pos.values == tgt.pos.values).all():
            raise ConfigError(f"trace rows of layers {source} and {target} do not line up")
        x = states[f"layer.{source}"].float()
        if x.shape[0] != len(src):
            raise ConfigError(f"states of layer {source} have {x.shape[0]} rows, the trace {len(src)}")
        y = torch.tensor(np.stack(tgt.topk.values).astype(np.int64))
        qhs = torch.tensor(np.stack([np.asarray(p[:k]) for p in src[col].values]).astype(np.int64))
        val = torch.tensor(src.step.values % val_every == 0)
        out.append(LayerData(source, target, x, y, qhs, val))
    return header, out


def topk_recall(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over tokens of |pred & y| / |y|."""
    hit = (pred[:, :, None] == y[:, None, :]).any(1).float().sum(1)
    return float((hit / y.shape[1]).mean()) if len(y) else float("nan")


def train_layer(d: LayerData, num_experts: int, width: int, epochs: int, lr: float, batch_size: int,
                weight_decay: float, seed: int) -> tuple[LayerMlp, dict[str, float]]:
    torch.manual_seed(seed)
    k = d.y.shape[1]
    x_tr, y_tr = d.x[~d.val], d.y[~d.val]
    x_va, y_va = d.x[d.val], d.y[d.val]
    if len(x_tr) == 0 or len(x_va) == 0:
        raise ConfigError(f"layer {d.target}: {len(x_tr)} training and {len(x_va)} held-out tokens; "
                          "record a longer trace (more prompts or workload.max_new_tokens)")
    hot = torch.zeros(len(y_tr), num_experts).scatter_(1, y_tr, 1.0)
    model = LayerMlp(x_tr.shape[1], width, num_experts)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_on(x: torch.Tensor, target: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(model(x), target))

    loss_before = loss_on(x_tr, hot)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_tr), generator=g).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(model(x_tr[idx]), hot[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x_va).topk(k, dim=1).indices
    const = torch.bincount(y_tr.reshape(-1), minlength=num_experts).topk(k).indices.expand(len(y_va), -1)
    return model, {
        "source": d.source, "target": d.target, "train_tokens": len(x_tr), "val_tokens": len(x_va),
        "loss_before": loss_before, "loss_after": loss_on(x_tr, hot),
        "val_loss": float(F.binary_cross_entropy_with_logits(
            model(x_va), torch.zeros(len(y_va), num_experts).scatter_(1, y_va, 1.0)).detach()),
        "val_recall_mlp": topk_recall(pred, y_va), "val_recall_constant": topk_recall(const, y_va),
        "val_recall_qhs": topk_recall(d.qhs[d.val], y_va),
    }


def train_predictors(trace: str | Path, distance: int = 1, width: int = 128, epochs: int = 40, lr: float = 3e-3,
                     batch_size: int = 256, weight_decay: float = 0.01, val_every: int = 5, seed: int = 0,
                     progress: bool = True) -> tuple[dict[int, LayerMlp], dict[str, Any], pd.DataFrame]:
    """Train one MLP per target layer; returns the models, what they were trained for, and the report."""
    header, layers = load_layer_data(trace, distance, val_every)
    if not layers:
        raise ConfigError(f"the model has {len(header['moe_layers'])} MoE layers: nothing is {distance} layers ahead")
    e = int(header["num_experts"])
    models, rows = {}, []
    for d in tqdm(layers, desc="predictors", unit="layer", disable=not progress):
        models[d.target], stats = train_layer(d, e, width, epochs, lr, batch_size, weight_decay, seed)
        rows.append(stats)
    info = {"model": header.get("model"), "hidden_size": int(layers[0].x.shape[1]), "num_experts": e,
            "top_k": int(header["top_k"]), "width": width, "distance": distance, "state": "post_attn",
            "trace": str(trace), "epochs": epochs, "lr": lr, "val_every": val_every}
    return models, info, pd.DataFrame(rows)
