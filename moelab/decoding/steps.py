"""Forward steps: what a decoding loop calls to run the model on new tokens, and the KV cache that call owns.

The loops (moelab.decoding.autoregressive, ...) take a step instead of building their own cache, so how a step
runs is decided in one place (torchtune's `generate` takes its step the same way):

- `EagerStep`: a `DynamicCache`, one eager forward per call (every backend, every phase).
- `GraphStep`: a `StaticCache`; prefill runs eagerly, decode steps of one token replay one CUDA graph captured on
  the second decode step (the first, eager, warms the kernels up). The graph reads the token and its position
  from static buffers; the backend's tables (moelab.offload.graph_executor) make the experts part of it. On a
  CPU the same step runs eagerly over the static cache, which is how the tests exercise it.

`step_for` picks: a `GraphStep` when the backend in use says it `captures` and the batch is one sequence (a
padded batch needs a mask that changes length every step), else an `EagerStep`.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import Any, Literal, Protocol

import torch
from transformers import DynamicCache, StaticCache

from moelab.models.hf_compat import cache_kwargs
from moelab.models.offloaded import OffloadedModel

Phase = Literal["prefill", "decode", "verify", "forward", "score"]
LENGTH_BUCKET = 64  # static caches are sized in multiples of this, so batches of similar length share a graph


class ForwardStep(Protocol):
    def __call__(self, phase: Phase, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Logits [B, S, V] for `ids` [B, S] appended to the cache, and the backend's step number."""
        ...

    def crop(self, length: int) -> None:
        """Keep the first `length` positions of the cache (speculative decoding's rollback of rejected tokens)."""
        ...


def crop_to(kv: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of a dynamic cache (a negative `crop` removes tokens in every
    transformers >= 5)."""
    extra = kv.get_seq_length() - length
    if extra > 0:
        kv.crop(-extra)


class EagerStep:
    """One eager forward per call over a `DynamicCache`."""

    def __init__(self, om: OffloadedModel):
        self.om = om
        self.kv = DynamicCache(config=om.config)

    def __call__(self, phase: Phase, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        from moelab.decoding.base import forward_step

        return forward_step(self.om, phase, ids, mask, self.kv)

    def crop(self, length: int) -> None:
        crop_to(self.kv, length)


class GraphStep:
    """Forward steps over a `StaticCache` of `max_len` positions; decode steps replay one captured CUDA graph."""

    def __init__(self, om: OffloadedModel, batch_size: int, max_len: int):
        self.om = om
        self.batch_size = batch_size
        self.max_len = max_len
        self.cache = StaticCache(config=om.config, max_cache_len=max_len)
        dev = om.device
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)  # [B, 1] the token fed
        self.pos = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)  # [B, 1] its position
        # transformers releases before 5.24 index a static cache by `cache_position`; later ones keep a counter
        self._cache_position = "cache_position" in inspect.signature(type(om.model).forward).parameters
        self.capturable = dev.type == "cuda"
        self.length = 0
        self.graph: Any = None
        self.out: torch.Tensor | None = None  # [B, 1, V] the graph's logits (rewritten by each replay)
        self.log: Any = None  # the backend's captured layer log
        self.eager_decodes = 0
        self.failure = ""  # why capture failed (the step then stays eager)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def reset(self) -> None:
        """Empty the cache in place (a captured graph keeps pointing at it)."""
        self.cache.reset()
        self.length = 0

    def crop(self, length: int) -> None:
        """Roll the cache back to `length` positions: later writes overwrite the rest (in place, graph-safe)."""
        if length < self.length:
            if not self._cache_position:  # releases that keep a per-layer counter of positions written
                for layer in self.cache.layers:
                    if getattr(layer, "is_initialized", False):
                        layer.cumulative_length.fill_(length)
            self.length = length

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Last-position logits [B, V] after feeding the prompt `ids` [B, P]."""
        return self("prefill", ids, None)[0][:, -1]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Last-position logits [B, V] after feeding one token per sequence `ids` [B, 1]."""
        return self("decode", ids, None)[0][:, -1]

    def __call__(self, phase: Phase, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        if mask is not None:
            raise ValueError("GraphStep runs unpadded batches (no attention mask)")
        n = ids.shape[1]
        if self.length + n > self.max_len:
            raise ValueError(f"the static cache holds {self.max_len} positions; {self.length + n} needed")
        if phase == "decode" and n == 1 and self.capturable and not self.failure:
            out = self._decode_graph(ids)
        else:
            out = self._eager(phase, ids)
        self.length += n
        return out

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        kw: dict[str, Any] = dict(input_ids=ids, position_ids=pos, use_cache=True)
        if self._cache_position:
            kw["cache_position"] = pos[0]
        return self.om.model(**kw, **cache_kwargs(self.om.model, self.cache)).logits  # [B, S, V]

    def _eager(self, phase: Phase, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        n = ids.shape[1]
        pos = torch.arange(self.length, self.length + n, device=ids.device).expand(ids.shape[0], n)  # [B, S]
        backend = self.om.backend
        step = backend.begin_step(phase, ids.numel())
        try:
            logits = self._forward(ids, pos)
        finally:
            backend.end_step()
        return logits, step

    def _decode_graph(self, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.graph is None:
            if self.eager_decodes < 1:  # the first decode step runs eagerly: kernels compiled, workspaces made
                self.eager_decodes += 1
                return self._eager("decode", ids)
            self._capture()
            if self.graph is None:
                return self._eager("decode", ids)
        self.ids.copy_(ids)
        self.pos.fill_(self.length)
        backend = self.om.backend
        step = backend.begin_step("decode", ids.numel())
        try:
            self.graph.replay()
            if self.log is not None:
                backend.use_log(self.log)
        finally:
            backend.end_step()
        assert self.out is not None
        return self.out, step

    def _capture(self) -> None:
        """Capture one decode step; nothing runs (the cache and the backend's tables are left as they are)."""
        backend = self.om.backend
        capture = getattr(backend, "capture", None)
        graph = torch.cuda.CUDAGraph()
        try:
            with capture() if capture is not None else nullcontext(), torch.cuda.graph(graph):
                out = self._forward(self.ids, self.pos)
            self.log = backend.take_log() if hasattr(backend, "take_log") else None
        except Exception as e:  # noqa: BLE001 - the step stays eager and the row says why
            self.failure = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            torch.cuda.synchronize(self.om.device)
            return
        self.graph, self.out = graph, out


def static_length(om: Any, max_len: int) -> int:
    """Positions of a static cache for sequences of up to `max_len`: rounded up to a bucket, within the model's."""
    length = -(-max_len // LENGTH_BUCKET) * LENGTH_BUCKET
    limit = getattr(om.config, "max_position_embeddings", None)
    return max(max_len, min(length, int(limit))) if limit else length


def step_for(om: OffloadedModel, batch_size: int, max_len: int) -> EagerStep | GraphStep:
    """The step a loop should use for a batch of `batch_size` sequences of up to `max_len` positions."""
    backend = getattr(om, "backend", None)
    if not getattr(backend, "captures", False) or batch_size != 1:
        return EagerStep(om)
    length = static_length(om, max_len)
    key = (batch_size, length)
    steps = backend.graph_steps
    if key not in steps:
        steps[key] = GraphStep(om, batch_size, length)
    step = steps[key]
    step.reset()
    return step
