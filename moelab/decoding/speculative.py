"""Speculative decoding with an offloaded MoE target: a dense draft on the device proposes `gamma` tokens,
the target verifies them in one forward step (one executor step of phase "verify"), both KV caches are
cropped to what was accepted.

For MoE-SpAc the verification pass is also a lookahead sensor: at every layer it routes gamma+1 tokens
at once, so the executor sees a per-expert frequency map instead of one token's binary choice.

Acceptance: `greedy` keeps the longest prefix of proposals equal to the target's argmax plus the target's
own next token (the output is exactly the target's greedy output); `sampling` is the standard rejection
sampling of speculative sampling (accept x with probability min(1, p(x)/q(x)), else resample from
max(0, p - q)), which leaves the target's sampling distribution unchanged. Batch size 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.decoding.base import Decoding, Generation, StepTiming, now_ms
from moelab.decoding.steps import EagerStep, ForwardStep, crop_to
from moelab.models.hf_compat import cache_kwargs
from moelab.models.hub import locate, weight_dir
from moelab.models.offloaded import OffloadedModel

ACCEPTANCE = ("greedy", "sampling")


class DraftModel:
    """The draft: an HF causal LM (`path`: a hub id or a local directory), or a small random dense model built
    from `config` (for random-weight targets, which have no trained draft). Loaded once per target device and
    dtype."""

    def __init__(self, path: str | None, arch: str, config: Mapping[str, Any] | None, seed: int):
        self.path, self.arch, self.config, self.seed = path, arch, dict(config or {}), seed
        self.model: torch.nn.Module | None = None
        self._key: tuple | None = None

    def get(self, om: OffloadedModel) -> torch.nn.Module:
        key = (str(om.device), om.dtype, int(om.config.vocab_size))
        if self.model is None or key != self._key:
            self.model = self._load(om)
            self._key = key
        return self.model

    def _load(self, om: OffloadedModel) -> torch.nn.Module:
        vocab = int(om.config.vocab_size)
        if self.path:
            local = weight_dir(locate(self.path))  # a hub id through the HF cache, as the target's
            try:
                model = AutoModelForCausalLM.from_pretrained(str(local), dtype=om.dtype)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot load the draft model at {self.path}: {e}") from None
        else:
            cfg = AutoConfig.for_model(self.arch, **{"vocab_size": vocab, **self.config})
            torch.manual_seed(self.seed)
            model = AutoModelForCausalLM.from_config(cfg, dtype=om.dtype)
        if int(model.config.vocab_size) != vocab:
            raise ConfigError(f"the draft's vocabulary ({model.config.vocab_size}) differs from the target's "
                              f"({vocab}); the draft must share the target's tokenizer")
        return model.to(om.device).eval().requires_grad_(False)


@register("decoding", "speculative")
class SpeculativeDecoding(Decoding):
    name = "speculative"
    follows_script = True

    def __init__(
        self,
        gamma: int = 4,
        acceptance: str = "greedy",
        temperature: float = 1.0,
        seed: int = 0,
        draft: Mapping[str, Any] | None = None,
        stop_at_eos: bool = False,
    ):
        if int(gamma) < 1:
            raise ConfigError(f"decoding.gamma must be >= 1, got {gamma}")
        if acceptance not in ACCEPTANCE:
            raise ConfigError(f"unknown decoding.acceptance {acceptance!r}; allowed: {', '.join(ACCEPTANCE)}")
        if acceptance == "sampling" and float(temperature) <= 0:
            raise ConfigError(f"decoding.temperature must be > 0 for sampling, got {temperature}")
        d = dict(draft or {})
        unknown = set(d) - {"path", "arch", "config", "seed"}
        if unknown:
            raise ConfigError(f"decoding.draft has no key(s) {', '.join(sorted(unknown))}; allowed: path, arch, "
                              "config, seed")
        self.gamma = int(gamma)
        self.acceptance = acceptance
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.stop_at_eos = stop_at_eos
        self.draft = DraftModel(d.get("path"), str(d.get("arch", "llama")), d.get("config"), int(d.get("seed", 0)))
        self.script: list[tuple[int, int]] | None = None
        self.reset_stats()

    def follow(self, script: list[tuple[int, int]]) -> None:
        """Propose and accept exactly these numbers of tokens, pass after pass (routing replay: the replayed
        passes must route as many tokens as the recorded ones; the tokens themselves do not matter)."""
        self.script = list(script)

    def reset_stats(self) -> None:
        self.proposed = 0
        self.accepted = 0
        self.verifications = 0

    def stats(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "acceptance_rate": self.accepted / self.proposed if self.proposed else nan,
            "mean_accepted_len": (self.accepted + self.verifications) / self.verifications if self.verifications
            else nan,
            "verifications": float(self.verifications),
        }

    @contextmanager
    def warming_up(self, max_new_tokens: int) -> Iterator[int]:
        """Within it, a generation of the yielded number of tokens per prompt runs a prefill and a verification
        pass of every length a timed generation of `max_new_tokens` may run: gamma+1 tokens, then each shorter one
        down to 2 (as at a prompt's end), one pass each with nothing accepted. A decoding that follows a recorded
        script keeps it (the recording decides every pass's tokens) and covers the first prompt in full. The
        script, the EOS stop and the statistics are restored after."""
        if self.script is not None:
            yield max_new_tokens
            return
        saved = self.script, self.stop_at_eos
        script = [(g, 0) for g in range(min(self.gamma, max_new_tokens - 1), 0, -1)]
        self.script, self.stop_at_eos = script, False
        try:
            yield 1 + len(script)
        finally:
            self.script, self.stop_at_eos = saved
            self.reset_stats()

    # ------------------------------------------------------------------ the loop
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
        """`step_factory(om, 1, max_len)`: the target's forward step per prompt (default: an `EagerStep`; the
        verification passes are not captured as graphs yet)."""
        self._make_step = step_factory or (lambda m, b, n: EagerStep(m))
        if any(len(b) != 1 for b in batches):
            raise ConfigError("decoding=speculative runs one sequence at a time: set workload.batch_size=1")
        draft = self.draft.get(om)
        self.reset_stats()
        gen = Generation([])
        rng = torch.Generator(device=om.device).manual_seed(self.seed)
        eos = om.tokenizer.eos_token_id
        self._next = iter(self.script) if self.script is not None else None
        for b, (prompt,) in enumerate(batches):
            out = self._one(om, draft, b, list(prompt), max_new_tokens, gen, keep_logits, on_tokens, rng, eos)
            gen.new_tokens.append(out)
        return gen

    def _one(self, om, draft, b, prompt, max_new, gen, keep_logits, on_tokens, rng, eos) -> list[int]:
        dev = om.device
        # the target's forward step and the KV cache it owns (moelab.decoding.steps), rolled back by `crop`
        target = self._make_step(om, 1, len(prompt) + max_new + self.gamma + 1)
        draft_kv = DynamicCache(config=draft.config)
        t0 = now_ms()
        logits, step = target("prefill", torch.tensor([prompt], device=dev), None)
        first = self._pick(logits[0, -1:], rng)[0]
        gen.steps.append(StepTiming(step, "prefill", b, 1, len(prompt), 1, now_ms() - t0))
        if keep_logits:
            gen.logits.append(logits[:, -1].float().cpu())
        seq = prompt + [first]
        out = [first]
        if on_tokens:
            on_tokens(1)
        dlen = 0  # tokens of `seq` in the draft's KV cache
        while len(out) < max_new and not (self.stop_at_eos and eos is not None and out[-1] == eos):
            t0 = now_ms()
            g = min(self.gamma, max_new - len(out))
            forced = next(self._next, None) if self._next is not None else None
            if forced is not None:
                g = forced[0]
            proposals, q = self._propose(draft, draft_kv, seq, dlen, g, rng)
            dlen = len(seq)
            # verify [last committed token, proposals] in one offloaded forward step
            x = torch.tensor([[seq[-1], *proposals]], device=dev)
            logits, step = target("verify", x, None)
            accepted, nxt = self._accept(logits[0].float(), proposals, q, rng)
            if forced is not None:
                accepted, nxt = forced[1], int(logits[0, forced[1]].argmax())
            new = proposals[:accepted] + [nxt]
            if keep_logits:  # one [1, vocab] row per committed token, as autoregressive decoding keeps them
                keep = min(accepted + 1, max_new - len(out))
                gen.logits.extend(logits[0, :keep].float().cpu().unsqueeze(1).unbind(0))
            base = len(seq)
            seq += new
            out += new
            target.crop(base + accepted)  # everything but the new last token, which the next step feeds
            dlen = min(dlen + accepted, draft_kv.get_seq_length())
            crop_to(draft_kv, dlen)  # the draft's own cache, rolled back as the target's step is
            self.proposed += g
            self.accepted += accepted
            self.verifications += 1
            gen.steps.append(StepTiming(step, "verify", b, 1, g + 1, len(new), now_ms() - t0))
            if on_tokens:
                on_tokens(len(new))
        return out[:max_new]

    def _propose(self, draft, draft_kv, seq, dlen, g, rng) -> tuple[list[int], list[torch.Tensor]]:
        """g draft tokens after `seq` (feeding the draft what its KV cache lacks first), with their distributions."""
        proposals: list[int] = []
        dists: list[torch.Tensor] = []
        x = torch.tensor([seq[dlen:]], device=draft.device)
        for _ in range(g):
            logits = draft(input_ids=x, use_cache=True, **cache_kwargs(draft, draft_kv)).logits[0, -1:].float()
            tok = self._pick(logits, rng)[0]
            if self.acceptance == "sampling":
                dists.append(torch.softmax(logits[0] / self.temperature, dim=-1))
            proposals.append(tok)
            x = torch.tensor([[tok]], device=draft.device)
        return proposals, dists

    def _pick(self, logits: torch.Tensor, rng: torch.Generator) -> list[int]:
        if self.acceptance == "greedy":
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=rng).reshape(-1).tolist()

    def _accept(self, logits: torch.Tensor, proposals: list[int], q: list[torch.Tensor],
                rng: torch.Generator) -> tuple[int, int]:
        """(number of proposals accepted, the target's token after them)."""
        g = len(proposals)
        if self.acceptance == "greedy":
            target = logits.argmax(dim=-1).tolist()  # target[i]: the target's choice after position i
            n = 0
            while n < g and proposals[n] == target[n]:
                n += 1
            return n, target[n]
        p = torch.softmax(logits / self.temperature, dim=-1)
        u = torch.rand(g, generator=rng, device=logits.device).tolist()
        for i, tok in enumerate(proposals):
            if u[i] < min(1.0, float(p[i, tok] / q[i][tok].clamp_min(1e-20))):
                continue
            residual = (p[i] - q[i]).clamp_min(0)
            residual = residual / residual.sum() if residual.sum() > 0 else p[i]
            return i, int(torch.multinomial(residual, 1, generator=rng))
        return g, int(torch.multinomial(p[g], 1, generator=rng))
