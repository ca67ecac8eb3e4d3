"""One model's training loop: AdamW, warm-up then cosine decay over a time budget, resumable.

The schedule runs on progress = max(step / max_steps, elapsed / minutes): a run sized in minutes (the
GPU machine allows 10 per command) decays properly however fast the machine is, and a run cut short
resumes where it stopped, schedule included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from moelab.train.data import TokenWindows
from moelab.train.router_losses import load_balance, z_loss


@dataclass
class TrainResult:
    steps: int
    tokens: int
    wall_s: float
    finished: bool
    train_loss: float


def lr_at(step: int, progress: float, lr: float, warmup: int, min_ratio: float) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup))
    return lr * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def lm_loss(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, spec: Mapping[str, Any]
) -> tuple[torch.Tensor, float]:
    """Next-token cross-entropy, plus per-layer router balance and z losses for MoE models."""
    aux_coef, z_coef = spec.get("aux_loss_coef", 0.0), spec.get("z_loss_coef", 0.0)
    moe = aux_coef > 0 or z_coef > 0
    out = model(input_ids=x, output_router_logits=True) if moe else model(input_ids=x)
    ce = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), y.reshape(-1))
    loss = ce
    if moe:
        router_logits = out.router_logits
        loss = loss + aux_coef * load_balance(router_logits, model.config.num_experts_per_tok)
        loss = loss + z_coef * z_loss(router_logits)
    return loss, ce.item()


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(
    model: torch.nn.Module,
    windows: TokenWindows,
    spec: Mapping[str, Any],
    state_path: Path,
    device: torch.device,
    deadline: float,
    desc: str,
    progress: bool = True,
) -> TrainResult:
    """Train until `spec.minutes` of training or `spec.max_steps` (finished), or `deadline` (resumable)."""
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.95), weight_decay=spec["weight_decay"],
                            fused=device.type == "cuda")
    step, elapsed, tokens, ema = 0, 0.0, 0, float("nan")
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step, elapsed, tokens, ema = state["step"], state["elapsed"], state["tokens"], state["loss"]
        windows.gen.set_state(state["rng"])
    budget_s = 60.0 * spec["minutes"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    model.train()
    last_save = time.time()
    bar = tqdm(total=spec["max_steps"], initial=step, desc=desc, disable=not progress, dynamic_ncols=True)

    def checkpoint() -> None:
        save_state(state_path, {"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                                "elapsed": elapsed, "tokens": tokens, "loss": ema, "rng": windows.gen.get_state()})

    finished = False
    while True:
        if step >= spec["max_steps"] or elapsed >= budget_s:
            finished = True
            break
        if time.time() >= deadline or (spec.get("stop_after_steps") and step >= spec["stop_after_steps"]):
            break  # resumable: the state is saved below
        t0 = time.time()
        p = max(step / spec["max_steps"], elapsed / budget_s)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, p, spec["lr"], spec["warmup_steps"], spec["min_lr_ratio"])
        x, y = windows.batch(spec["batch_size"], device)
        with autocast:
            loss, ce = lm_loss(model, x, y, spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        opt.step()
        step += 1
        tokens += x.numel()
        ema = ce if math.isnan(ema) else 0.98 * ema + 0.02 * ce
        if device.type == "cuda" and step % 10 == 0:
            torch.cuda.synchronize(device)
        elapsed += time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}", min=f"{elapsed / 60:.1f}")
        if not progress and step % spec.get("log_every", 250) == 0:
            print(f"[{desc}] step {step} loss {ema:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{tokens / max(elapsed, 1e-9):,.0f} tok/s {elapsed / 60:.1f} min", flush=True)
        if time.time() - last_save > spec.get("save_every_s", 60):
            checkpoint()
            last_save = time.time()
    bar.close()
    checkpoint()
    model.eval()
    return TrainResult(step, tokens, elapsed, finished, ema)
