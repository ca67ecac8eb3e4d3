"""`MoelabLM`: the three request types of lm-evaluation-harness answered by a moelab model.

Whatever backend the model is using answers them: inside `moelab.assembly.through_executor` that is the
offload executor with the run's prefetch/cache/balancer policy (speculative execution included), and
generation uses the run's decoding (autoregressive or speculative), so a task score measures the
configuration, not the plain model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from moelab.decoding.base import forward_step


@register_model("moelab")
class MoelabLM(LM):
    def __init__(self, om: Any = None, decoding: Any = None, max_length: int | None = None,
                 progress: bool = False, session: Any = None, **kwargs: Any):
        super().__init__()
        if om is None:  # built by lm-eval from --model_args: compose a moelab config and open it
            from moelab.eval.session import Session

            session = Session.from_args(**kwargs)
            om, decoding = session.om, session.decoding
        self.session = session  # keeps the executor context of a session opened here
        self.om, self.decoding = om, decoding
        self.max_length = int(max_length or getattr(om.config, "max_position_embeddings", 2048) or 2048)
        self.progress = progress

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> MoelabLM:
        """`config=NAME,overrides=a=1 b=2` (overrides split on spaces or ';', since lm-eval splits on ',')."""
        args: dict[str, str] = {}
        key = None
        for part in (arg_string or "").split(","):
            k, sep, v = part.partition("=")
            if sep and k.strip() in ("config", "overrides", "max_length"):
                key = k.strip()
                args[key] = v
            elif key is not None:  # a comma inside an override value
                args[key] += "," + part
        return cls.create_from_arg_obj(args)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> MoelabLM:
        """`{"config": NAME, "overrides": "a=1 b=2", "max_length": N}`; lm-eval's own batch_size/device are
        ignored (the moelab config sets the device; requests run one at a time)."""
        unknown = sorted(set(arg_dict) - {"config", "overrides", "max_length"})
        if unknown:
            raise ValueError(f"unknown moelab model_args {', '.join(unknown)}; allowed: config, overrides, max_length")
        overrides = arg_dict.get("overrides") or ""
        overrides = overrides if isinstance(overrides, list) else str(overrides).replace(";", " ").split()
        length = arg_dict.get("max_length")
        return cls(config=str(arg_dict.get("config", "config")), overrides=overrides,
                   max_length=int(length) if length else None, progress=True)

    # --- token helpers -------------------------------------------------------------------------------------
    @property
    def prefix_id(self) -> int:
        tok = self.om.tokenizer
        eos = getattr(tok, "eos_token_id", None)
        return int(eos if eos is not None else getattr(tok, "pad_token_id", 0) or 0)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, split where the context's own encoding ends (whitespace moved onto
        the continuation, as lm-eval's HF model does)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        encode = self.om.tokenizer.encode
        whole, ctx = encode(context + continuation), encode(context)
        return (ctx or [self.prefix_id]), whole[len(ctx):]

    @torch.no_grad()
    def _score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """Sum of the continuation's log-probabilities after the context, and whether greedy decoding gives it."""
        if not cont:
            return 0.0, True
        ids = (ctx + cont)[-(self.max_length + 1):][:-1]
        x = torch.tensor([ids], dtype=torch.long, device=self.om.device)
        logits, _ = forward_step(self.om, "score", x, None, None)
        logp = F.log_softmax(logits[0, -len(cont):].float(), dim=-1)
        target = torch.tensor(cont, dtype=torch.long, device=logp.device)
        return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())

    def _bar(self, requests: list, what: str):
        return tqdm(requests, desc=f"lm-eval {what}", disable=not self.progress, leave=False)

    # --- the three request types ---------------------------------------------------------------------------
    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        return [self._score(*self._encode_pair(*r.args)) for r in self._bar(requests, "loglikelihood")]

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        out = []
        for r in self._bar(requests, "loglikelihood_rolling"):
            ids = self.om.tokenizer.encode(r.args[0])
            windows = get_rolling_token_windows(ids, self.prefix_id, self.max_length, 1)
            out.append(sum(self._score(*make_disjoint_window(w))[0] for w in windows))
        return out

    def generate_until(self, requests: list) -> list[str]:
        out = []
        for r in self._bar(requests, "generate_until"):
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = self.om.tokenizer.encode(context)[-max(1, self.max_length - max_new):] or [self.prefix_id]
            gen = self.decoding.generate(self.om, [[ids]], max_new)
            text = self.om.tokenizer.decode(gen.new_tokens[0])
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out
