"""What the model card reports: validation loss, expert load and routing entropy, draft acceptance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


@torch.no_grad()
def eval_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    total, n = 0.0, 0
    for x, y in batches:
        logits = model(input_ids=x).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        n += y.numel()
    return total / n


@torch.no_grad()
def routing_stats(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], top_k: int) -> dict:
    """Per layer: fraction of routed tokens per expert, entropy of that load (bits), mean per-token
    router entropy (bits), the fraction of consecutive tokens that keep at least one expert, and how many
    experts receive under 1% of the tokens (almost dead: an offloading study would see fewer experts)."""
    loads: list[torch.Tensor] = []
    tok_entropy: list[float] = []
    keep: list[float] = []
    for x, _ in batches:
        out = model(input_ids=x, output_router_logits=True)
        for li, logits in enumerate(out.router_logits):
            probs = logits.float().softmax(-1)
            chosen = probs.topk(top_k, dim=-1).indices  # [B*T, k]
            counts = torch.bincount(chosen.reshape(-1), minlength=probs.shape[-1]).float().cpu()
            if len(loads) <= li:
                loads.append(torch.zeros_like(counts))
                tok_entropy.append(0.0)
                keep.append(0.0)
            loads[li] += counts
            tok_entropy[li] += (-(probs * probs.clamp_min(1e-12).log2()).sum(-1)).mean().item() / len(batches)
            c = chosen.reshape(x.shape[0], x.shape[1], top_k)
            same = (c[:, 1:, :, None] == c[:, :-1, None, :]).any(-1).any(-1).float().mean().item()
            keep[li] += same / len(batches)
    out_layers = []
    for li, load in enumerate(loads):
        frac = load / load.sum()
        ent = -(frac * frac.clamp_min(1e-12).log2()).sum().item()
        token_share = frac * top_k  # share of tokens that route to each expert
        out_layers.append({"layer": li, "load": [round(v, 4) for v in frac.tolist()], "load_entropy_bits": ent,
                           "token_entropy_bits": tok_entropy[li], "consecutive_overlap": keep[li],
                           "experts_under_1pct": int((token_share < 0.01).sum().item())})
    num_experts = len(loads[0]) if loads else 0
    under = sum(r["experts_under_1pct"] for r in out_layers)
    return {"uniform_bits": math.log2(num_experts) if num_experts else 0.0, "layers": out_layers,
            "share_experts_under_1pct": under / max(1, num_experts * len(out_layers))}


@torch.no_grad()
def greedy_acceptance(target, draft, prompts: list[torch.Tensor], gamma: int, new_tokens: int) -> dict[str, float]:
    """Speculative decoding with greedy verification, recomputed without caches (small models):
    the draft proposes `gamma` tokens, the target keeps the longest prefix it agrees with plus its own
    next token. Returns acceptance rate (accepted / proposed) and tokens committed per verification."""
    proposed = accepted = passes = committed = 0
    for prompt in prompts:
        seq = prompt.clone()
        start = seq.shape[-1]
        while seq.shape[-1] - start < new_tokens:
            guess = seq
            for _ in range(gamma):
                nxt = draft(input_ids=guess).logits[:, -1].argmax(-1, keepdim=True)
                guess = torch.cat([guess, nxt], dim=-1)
            verify = target(input_ids=guess).logits[:, seq.shape[-1] - 1 :].argmax(-1)  # [1, gamma + 1]
            props = guess[:, seq.shape[-1] :]
            n = 0
            while n < gamma and verify[0, n] == props[0, n]:
                n += 1
            seq = torch.cat([seq, props[:, :n], verify[:, n : n + 1]], dim=-1)
            proposed += gamma
            accepted += n
            passes += 1
            committed += n + 1
    return {"acceptance_rate": accepted / max(1, proposed), "mean_accepted_len": committed / max(1, passes)}


def write_card(path: Path, title: str, facts: Mapping[str, Any], routing: Mapping[str, Any] | None = None) -> None:
    """README.md next to the weights: how the model was made and what it measures."""
    lines = [f"# {title}", "", "Trained by `python -m moelab.train` (moelab). The facts below were measured "
             "at the end of training.", "", "| fact | value |", "|---|---|"]
    for k, v in facts.items():
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if routing:
        lines += ["", f"## Routing (validation tokens; uniform load entropy = {routing['uniform_bits']:.3f} bits)", "",
                  "| layer | load entropy (bits) | per-token router entropy (bits) | consecutive tokens sharing an "
                  "expert | max / min expert load | experts under 1% of tokens |", "|---|---|---|---|---|---|"]
        for r in routing["layers"]:
            lines.append(f"| {r['layer']} | {r['load_entropy_bits']:.3f} | {r['token_entropy_bits']:.3f} | "
                         f"{r['consecutive_overlap']:.3f} | {max(r['load']):.3f} / {min(r['load']):.3f} | "
                         f"{r['experts_under_1pct']} |")
        lines += ["", f"Share of (layer, expert) pairs receiving under 1% of tokens: "
                  f"{routing['share_experts_under_1pct']:.3f}"]
        lines += ["", "Expert load per layer (fraction of routed tokens):", ""]
        for r in routing["layers"]:
            lines.append(f"- layer {r['layer']}: {', '.join(f'{v:.3f}' for v in r['load'])}")
    path.write_text("\n".join(lines) + "\n")
