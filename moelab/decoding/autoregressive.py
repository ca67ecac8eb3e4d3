"""Greedy autoregressive decoding: one token per sequence per step (batch 1 is the headline case).

The forward step (and the KV cache it owns) comes from `moelab.decoding.steps.step_for`, or from the caller's
`step_factory`: the same loop runs eager steps and captured CUDA-graph steps."""

from __future__ import annotations

from collections.abc import Callable

import torch

from moelab.core.registry import register
from moelab.decoding.base import Decoding, Generation, StepTiming, left_pad, now_ms
from moelab.decoding.steps import ForwardStep, step_for
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
        step_factory: Callable[[OffloadedModel, int, int], ForwardStep] | None = None,
    ) -> Generation:
        """`step_factory(om, batch_size, max_len)`: the forward step of each batch (default: `step_for`)."""
        make_step = step_factory or step_for
        outputs: list[list[int]] = []
        gen = Generation(outputs)
        eos = om.tokenizer.eos_token_id
        pad = om.tokenizer.pad_token_id or 0
        for b, prompts in enumerate(batches):
            ids, mask = left_pad(prompts, pad, om.device)
            forward = make_step(om, len(prompts), ids.shape[1] + max_new_tokens)
            produced = [[] for _ in prompts]
            done = [False] * len(prompts)
            phase = "prefill"
            for _ in range(max_new_tokens):
                t0 = now_ms()
                logits, step_no = forward(phase, ids, mask)
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
