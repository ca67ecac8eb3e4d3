"""Greedy autoregressive decoding: one token per sequence per step (batch 1 is the headline case)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache

from moelab.core.registry import register
from moelab.decoding.base import Decoding, Generation, StepTiming, forward_step, left_pad, now_ms
from moelab.models.offloaded import OffloadedModel


@register("decoding", "autoregressive")
class AutoregressiveDecoding(Decoding):
    name = "autoregressive"

    def __init__(self, stop_at_eos: bool = False):
        self.stop_at_eos = stop_at_eos

    @torch.no_grad()
    def generate(
        self,
        om: OffloadedModel,
        batches: list[list[list[int]]],
        max_new_tokens: int,
        keep_logits: bool = False,
        on_tokens: Callable[[int], None] | None = None,
    ) -> Generation:
        outputs: list[list[int]] = []
        gen = Generation(outputs)
        eos = om.tokenizer.eos_token_id
        pad = om.tokenizer.pad_token_id or 0
        for b, prompts in enumerate(batches):
            ids, mask = left_pad(prompts, pad, om.device)
            kv = DynamicCache(config=om.config)
            produced = [[] for _ in prompts]
            done = [False] * len(prompts)
            phase = "prefill"
            for _ in range(max_new_tokens):
                t0 = now_ms()
                logits, step_no = forward_step(om, phase, ids, mask, kv)
                logits = logits[:, -1]
                nxt = logits.argmax(dim=-1)
                tokens = nxt.tolist()
                gen.steps.append(StepTiming(step_no, phase, b, len(prompts), ids.numel(), 1, now_ms() - t0))
                if keep_logits:
                    gen.logits.append(logits.float().cpu())
                for i, t in enumerate(tokens):
                    if not done[i]:
                        produced[i].append(t)
                        done[i] = self.stop_at_eos and eos is not None and t == eos
                if on_tokens:
                    on_tokens(len(prompts))
                if all(done):
                    break
                ids = nxt.unsqueeze(-1)
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
                phase = "decode"
            outputs.extend(produced)
        return gen
