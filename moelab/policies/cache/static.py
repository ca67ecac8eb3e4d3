"""Fiddler's placement: a static hot set of experts, chosen from a routing profile, sits on the GPU for the whole
run; a few scratch slots serve the other experts on demand (LRU among them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from moelab.core.context import RunContext
from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.core.types import ExpertKey, ModelSpec, RoutingLog
from moelab.policies.cache.lru import LruCache


def layer_call_uses(routing: RoutingLog) -> Counter[ExpertKey]:
    """Per (layer, expert): in how many layer calls it was used. A call is what a miss costs (one fetch or one CPU
    job), however many of the call's tokens chose the expert, so that is what the hot set should cover."""
    uses: Counter[ExpertKey] = Counter()
    for _, layer, experts in routing:
        uses.update(ExpertKey(int(layer), int(e)) for e in set(experts))
    return uses


@register("cache", "static")
class StaticCache(LruCache):
    """The `capacity - scratch` (layer, expert) keys used in the most layer calls of the profile (ties by layer,
    then expert) are loaded before the timed pass (`preload`) and never evicted while another candidate exists;
    the remaining `scratch` slots hold on-demand fetches, LRU among them. Combined with `balancer=cpu_cold` it is
    Fiddler's baseline (`policy=fiddler`): hot experts on the GPU, cold ones on the CPU when that is faster.

    `profile=run` takes the routing of a first, untimed pass over the same prompts (recorded by the runner as the
    oracle's future is). That profile is in-sample: the best case for any static placement, which makes this
    baseline stronger, not weaker. A path instead reads a routing trace recorded with `record_trace=true` (an
    out-of-sample profile); its MoE layers and expert count must be the model's.

    If only hot experts can give up a slot (e.g. a prefill step needing more cold experts than there are scratch
    slots), the least recently used hot one goes; `stats()` reports it as `static_hot_evictions`. A hot expert
    that returns is protected again.
    """

    def __init__(self, scratch: int | None = None, profile: str = "run"):
        if scratch is not None and (isinstance(scratch, bool) or not isinstance(scratch, int) or scratch < 1):
            raise ConfigError(f"cache.scratch must be an integer >= 1 (slots for on-demand fetches), got {scratch!r}")
        self.scratch_param = scratch
        self.profile = str(profile)
        self.needs_future = self.profile == "run"
        self.uses: Counter[ExpertKey] | None = None  # the profile: layer calls per key
        self._trace: dict[str, Any] | None = None
        if not self.needs_future:
            self._read_trace(Path(self.profile))
        self.hot: frozenset[ExpertKey] = frozenset()
        self.hot_evictions = 0

    def _read_trace(self, path: Path) -> None:
        """Read the trace now (a missing or malformed file fails before any weight is read); checked against
        the model in `reset`, once the model is known."""
        from moelab.routing.trace import read_trace

        header, df = read_trace(path)
        self._trace = {"path": str(path), "moe_layers": [int(x) for x in header.get("moe_layers", [])],
                       "num_experts": int(header.get("num_experts", -1))}
        routing = [(int(step), int(layer), tuple(sorted({int(e) for t in g.topk for e in t})))
                   for (step, layer), g in df.groupby(["step", "layer"], sort=True)]
        self.uses = layer_call_uses(routing)

    def _check_trace(self, spec: ModelSpec) -> None:
        t = self._trace
        if t is None:
            return
        if t["moe_layers"] != list(spec.moe_layers) or t["num_experts"] != spec.num_experts:
            raise ConfigError(
                f"cache.profile={t['path']} was recorded with MoE layers {t['moe_layers']} and {t['num_experts']} "
                f"experts; this model has MoE layers {list(spec.moe_layers)} and {spec.num_experts} experts "
                "(record the profile with this model, or use cache.profile=run)"
            )

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        spec, capacity = ctx.spec, ctx.capacity
        self.scratch = spec.top_k if self.scratch_param is None else self.scratch_param
        if not 1 <= self.scratch < capacity:
            given = f"cache.scratch={self.scratch}" + (" (the default, top_k)" if self.scratch_param is None else "")
            raise ConfigError(
                f"{given} is out of range for a GPU budget of {capacity} slots: allowed 1..{capacity - 1} "
                "(at least one slot for on-demand fetches, at least one for the hot set)"
            )
        self._check_trace(spec)
        if ctx.future is not None and self.needs_future:  # the profile pass's routing: the hot set comes from it
            self.uses = layer_call_uses(ctx.future)
        self._choose_hot()

    def reset(self) -> None:
        super().reset()
        self.hot_evictions = 0

    def _choose_hot(self) -> None:
        if self.uses is None:
            self.hot = frozenset()
            return
        ranked = sorted(self.uses.items(), key=lambda kv: (-kv[1], kv[0].layer, kv[0].expert))
        self.hot = frozenset(k for k, _ in ranked[: self.capacity - self.scratch])

    def preload(self) -> Sequence[ExpertKey]:
        return sorted(self.hot, key=lambda k: (k.layer, k.expert))

    def on_evict(self, key: ExpertKey) -> None:
        # counted here, not in `victim`, so evictions decided by the executor's plan-aware path count too
        self.hot_evictions += key in self.hot
        super().on_evict(key)

    def victim_where(self, allowed: Callable[[ExpertKey], bool], resident: Collection[ExpertKey]) -> ExpertKey | None:
        fallback = None
        for key in self._order:  # oldest first
            if key in resident and allowed(key):
                if key not in self.hot:
                    return key
                if fallback is None:
                    fallback = key  # the least recently used hot key, only if nothing cold can go
        return fallback

    def victim(self, candidates: Sequence[ExpertKey]) -> ExpertKey:
        cold = [k for k in candidates if k not in self.hot]
        return super().victim(cold or candidates)

    def stats(self) -> dict[str, int]:
        return {"static_hot_experts": len(self.hot), "static_hot_evictions": self.hot_evictions}
