"""Perplexity of the workload's documents under whichever backend the model is using."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moelab.decoding.base import forward_step
from moelab.models.offloaded import OffloadedModel


def perplexity(om: OffloadedModel, ids: list[int]) -> float:
    """exp(mean next-token NLL) over one document's `ids`."""
    return corpus_perplexity(om, [ids])


@torch.no_grad()
def corpus_perplexity(om: OffloadedModel, docs: list[list[int]]) -> float:
    """exp(total next-token NLL / predicted tokens) over documents, one forward pass each; NaN without any."""
    total, count = 0.0, 0
    for ids in docs:
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], dtype=torch.long, device=om.device)
        logits, _ = forward_step(om, "score", x, None, None)
        total += F.cross_entropy(logits[0, :-1].float(), x[0, 1:], reduction="sum").item()
        count += len(ids) - 1
    return math.exp(total / count) if count else float("nan")
