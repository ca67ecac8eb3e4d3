"""What every decoding loop returns, and the one forward step they all share."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from moelab.core.errors import ConfigError
from moelab.models.hf_compat import cache_kwargs
from moelab.models.offloaded import OffloadedModel


@dataclass
class StepTiming:
    step: int  # executor step number (-1 under the reference backend)
    phase: str  # "prefill" | "decode" | "verify"
    batch: int  # which batch of prompts
    rows: int  # sequences in that batch
    tokens: int  # tokens fed through the model in this step
    new_tokens: int  # tokens committed to the output by this step (per sequence)
    wall_ms: float  # host time from issuing the step to having its tokens


@dataclass
class Generation:
    new_tokens: list[list[int]]  # per prompt, in workload order
    steps: list[StepTiming] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # per step, last-position logits (if kept)

    def ttft_ms(self) -> list[float]:
        return [s.wall_ms for s in self.steps if s.phase == "prefill"]

    def decode_ms_per_token(self) -> list[float]:
        """Host time per committed token of each decode step."""
        return [s.wall_ms / max(1, s.new_tokens) for s in self.steps if s.phase != "prefill"]

    def decode_tokens_per_s(self) -> float:
        """Committed tokens (all sequences) per second of decode host time; NaN without decode steps."""
        decode = [s for s in self.steps if s.phase != "prefill"]
        wall = sum(s.wall_ms for s in decode)
        return sum(s.new_tokens * s.rows for s in decode) / (wall / 1e3) if wall else float("nan")


class Decoding(ABC):
    """A decoding loop (registry kind `decoding`): turns batches of prompts into committed tokens through
    whatever backend the model is using (reference, executor, replay)."""

    name: str = ""
    gamma: int | None = None  # draft tokens per verification pass (speculative decoding); None otherwise
    # True for loops that can replay a recording's (proposed, accepted) token counts pass by pass (`follow`)
    follows_script: bool = False

    @abstractmethod
    def generate(
        self,
        om: OffloadedModel,
        batches: list[list[list[int]]],
        max_new_tokens: int,
        keep_logits: bool = False,
        on_tokens: Callable[[int], None] | None = None,
    ) -> Generation:
        """Generate `max_new_tokens` per prompt, batch after batch; `on_tokens(n)` reports progress."""

    def follow(self, script: list[tuple[int, int]]) -> None:
        """Replay these (proposed, accepted) counts instead of deciding them (only if `follows_script`)."""
        raise ConfigError(f"decoding={self.name} cannot follow a recorded speculation script; use "
                          "decoding=speculative")

    def stats(self) -> dict[str, float]:
        """Results-row columns about the last timed pass (e.g. acceptance); none by default."""
        return {}

    @contextmanager
    def warming_up(self, max_new_tokens: int) -> Iterator[int]:
        """Within it, a generation of the yielded number of tokens per prompt runs every (phase, tokens per
        sequence) shape a generation of `max_new_tokens` can run (the runner's untimed warm-up): here a prefill
        and a one-token decode step."""
        yield min(2, max_new_tokens)


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch prompts with padding on the left; no mask is needed for a batch of one."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    if len(prompts) == 1:
        return ids.to(device), None
    return ids.to(device), mask.to(device)


def forward_step(
    om: OffloadedModel,
    phase: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kv: Any,
) -> tuple[torch.Tensor, int]:
    """One model forward inside an executor step; returns logits [batch, seq, vocab] and the step number."""
    position_ids = None
    if attention_mask is not None:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
    step = om.backend.begin_step(phase, input_ids.numel())
    try:
        out = om.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=True, **cache_kwargs(om.model, kv),
        )
    finally:
        om.backend.end_step()
    return out.logits, step


def now_ms() -> float:
    return time.perf_counter() * 1e3
