"""Replay a recorded trace's routing into another model (e.g. a full-size random-weight Mixtral), so that
transfers have real sizes while routing has a trained model's locality.

Mapping (documented choices):
- layers: the i-th of the model's MoE layers takes the routing of source MoE layer floor(i * L_src / L).
- experts, by the source's ranking r1, r2, ... of each token (all experts by router logit):
  * same number of experts: the source's own choice (its first k of `topk`, then of `ranking`);
  * fewer experts (E < E_src): r -> r mod E, skipping repeats, until k distinct;
  * more experts (E = m * E_src or more; m experts stand for each source expert) and k a multiple of the
    source's k_src with q = k / k_src <= m: the source's j-th chosen expert r_j becomes q experts of its
    group, r_j * m + ((j * q + i) mod m) for i < q. The destination choice depends on the source's chosen
    experts alone, so a token that keeps its source experts keeps its destination experts (locality), and
    a prediction that names the right source experts names the right destination ones; all E are
    reachable as r_j is ranked first or second. Otherwise the j-th choice is r_j * m + (r_{j+1} mod m)
    over the source's full ranking (an ordered pair of source experts).
  Where none of these applies (more experts, and k neither a multiple of k_src within m nor at most E_src),
  there is no mapping: refused before any weight is read (`ReplayRouting.mapping`).
- weights: the source's if k is the same, else uniform 1/k (weights scale outputs, not transfers).
- workload: the trace's prompts (token ids modulo the vocabulary), batch size and new tokens, so the
  steps line up one to one with the recording. A trace of speculative decoding is replayed by speculative
  decoding that proposes and accepts exactly the recorded numbers of tokens per verification pass (the
  header's `steps`), so each pass routes as many tokens as the recorded one.

Valid under replay: every policy that decides from routing events (none, ar_binary, lru, lfu, spac
frequency maps, oracle/belady from the replayed trace). Predictors that read hidden states (qhs, mlp)
use the trace's recorded predictions (`pred_d1`, `pred_d2`, via `ReplayBackend.predicted`): the random
model's own hidden states say nothing about the replayed routing. So under replay `qhs` replays what the
recorded model's routers predicted (state=post_attn, d <= the trace's lookahead), and `mlp` is refused.

A trace whose shape differs from the model's (MoE layers, experts or top_k) is replayed with the mapping above and
the run says so in one `note:` line on stderr (layers i -> source layer, experts E_src -> E) and in the row's
`replay_mapping` column; the same shape has no note and an empty column.
"""

from __future__ import annotations

from typing import Any

import torch

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.routing.base import Routing
from moelab.routing.trace import read_trace


def map_experts(ranking: list[int], topk: list[int], e_src: int, e_dst: int, k: int) -> list[int]:
    """k distinct destination experts for one token (see the module docstring)."""
    if e_dst == e_src:
        order = list(topk) + [e for e in ranking if e not in topk]
        return order[:k]
    if e_dst < e_src:
        out: list[int] = []
        for e in list(topk) + list(ranking):
            d = e % e_dst
            if d not in out:
                out.append(d)
            if len(out) == k:
                return out
        raise ConfigError(f"cannot map {e_src} source experts to {k} distinct of {e_dst}")
    m = e_dst // e_src
    if topk and k % len(topk) == 0 and k // len(topk) <= m:
        q = k // len(topk)
        return [e * m + (j * q + i) % m for j, e in enumerate(topk) for i in range(q)]
    order = list(topk) + [e for e in ranking if e not in topk]
    if k > len(order):
        raise ConfigError(f"replay needs top_k <= the trace's {len(order)} experts, got top_k={k}")
    return [order[j] * m + (order[(j + 1) % len(order)] % m) for j in range(k)]


def layer_map(src_layers: list[int], moe_layers: list[int]) -> dict[int, int]:
    """The model's i-th MoE layer -> source MoE layer floor(i * L_src / L)."""
    return {layer: src_layers[(i * len(src_layers)) // len(moe_layers)] for i, layer in enumerate(moe_layers)}


def _experts_rule(e_src: int, e_dst: int, k_src: int, k: int) -> str | None:
    """How a token's experts map (see the module docstring); None where no mapping exists."""
    if e_dst == e_src:
        return "same experts"
    if e_dst < e_src:
        return "source expert r -> r mod " + str(e_dst)
    m = e_dst // e_src
    if k % k_src == 0 and k // k_src <= m:
        return f"each chosen source expert -> {k // k_src} of its group of {m}"
    if k <= e_src:
        return f"j-th choice -> r_j * {m} + (r_(j+1) mod {m}) over the source's ranking"
    return None


@register("routing", "replay")
class ReplayRouting(Routing):
    replays = True

    def __init__(self, trace: str | None = None):
        if not trace:
            raise ConfigError("routing=replay needs routing.trace=PATH (a trace recorded with record_trace=true)")
        self.header, df = read_trace(trace)
        self.path = trace
        self._by_step: dict[int, dict[int, Any]] = {}
        for (step, layer), g in df.groupby(["step", "layer"], sort=True):
            self._by_step.setdefault(int(step), {})[int(layer)] = g.sort_values("pos")
        self.steps = sorted(self._by_step)
        self._device_tables: tuple[Any, Any] | None = None  # moelab.routing.device_replay, built once per executor

    def mapping(self, spec: Any) -> str | None:
        """How the trace maps onto a model of shape `spec` (one line), None for the same shape; a ConfigError
        where no mapping exists. Decided from the header and the model's plan, before any weight is read."""
        h = self.header
        src, moe = [int(x) for x in h["moe_layers"]], [int(x) for x in spec.moe_layers]
        e_src, k_src, e, k = int(h["num_experts"]), int(h["top_k"]), int(spec.num_experts), int(spec.top_k)
        rule = _experts_rule(e_src, e, k_src, k)
        if rule is None:
            m = e // e_src
            raise ConfigError(f"routing=replay: the trace {self.path} routes top_k={k_src} of {e_src} experts, which "
                              f"does not map to the model's top_k={k} of {e}; allowed: top_k <= {e_src}, or a "
                              f"multiple of {k_src} up to {k_src * m} (model.config.num_experts_per_tok)")
        if src == moe and e == e_src and k == k_src:
            return None
        layers = ", ".join(f"{i}->{s}" for i, s in layer_map(src, moe).items())
        return (f"routing=replay maps the trace's {len(src)} MoE layers onto the model's {len(moe)} (layer -> source "
                f"layer: {layers}); experts {e_src} -> {e} ({rule}); top_k {k_src} -> {k}"
                + ("" if k == k_src and e == e_src else ", weights uniform 1/top_k"))

    def speculation(self) -> list[tuple[int, int]]:
        """(draft tokens proposed, accepted) of each verification pass of a speculative recording, in order."""
        return [(int(tokens) - 1, int(new) - 1) for _, phase, tokens, new in self.header.get("steps", [])
                if phase == "verify"]

    def workload(self, vocab_size: int) -> tuple[list[list[list[int]]], int]:
        """Batches and new tokens that reproduce the recording's steps."""
        prompts = [[t % vocab_size for t in p] for p in self.header["prompts"]]
        bs = int(self.header["batch_size"])
        return [prompts[i : i + bs] for i in range(0, len(prompts), bs)], int(self.header["max_new_tokens"])

    def wrap(self, backend: Any, om: Any) -> Any:
        if getattr(backend, "captures", False):  # a graph executor: the routing as device tables (captured)
            from moelab.routing.device_replay import DeviceReplayBackend, DeviceReplayTables

            key = (id(backend), str(om.device))
            if self._device_tables is None or self._device_tables[0] != key:
                self._device_tables = (key, DeviceReplayTables(ReplayBackend(backend, self, om.spec), om.device))
            return DeviceReplayBackend(backend, self, om.spec, self._device_tables[1])
        return ReplayBackend(backend, self, om.spec)


class ReplayBackend:
    """Substitutes each layer call's routing with the trace's, then hands it to the wrapped backend."""

    def __init__(self, inner: Any, replay: ReplayRouting, spec: Any):
        self.inner = inner
        self.replay = replay
        self.spec = spec
        h = replay.header
        self.layer_map = layer_map(list(h["moe_layers"]), list(spec.moe_layers))
        self.e_src = int(h["num_experts"])
        self.k_src = int(h["top_k"])
        self.cursor = -1
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        self.cursor = -1

    def begin_step(self, phase: str, num_tokens: int) -> int:
        self.cursor += 1
        if self.cursor >= len(self.replay.steps):
            raise ConfigError(f"the trace {self.replay.path} has {len(self.replay.steps)} steps; this run needs more")
        return self.inner.begin_step(phase, num_tokens)

    def end_step(self) -> None:
        self.inner.end_step()

    def routing(self, layer: int, num_tokens: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.cursor, layer)
        if key not in self._cache:
            rows = self.replay._by_step[self.replay.steps[self.cursor]].get(self.layer_map[layer])
            if rows is None or len(rows) != num_tokens:
                raise ConfigError(
                    f"trace step {self.cursor} has {0 if rows is None else len(rows)} tokens at layer "
                    f"{self.layer_map[layer]}, the run has {num_tokens}: replay the trace's own workload"
                )
            k = self.spec.top_k
            idx = [map_experts(list(r), list(t), self.e_src, self.spec.num_experts, k)
                   for r, t in zip(rows.ranking, rows.topk)]
            if k == self.k_src and self.e_src == self.spec.num_experts:
                w = [list(x)[:k] for x in rows.weights]
            else:
                w = [[1.0 / k] * k for _ in idx]
            self._cache = {key: (torch.tensor(idx, dtype=torch.long), torch.tensor(w, dtype=torch.float32))}
        idx, w = self._cache[key]
        return idx.to(device), w.to(device=device, dtype=dtype)

    def predicted(self, layer: int, distance: int, k: int, device: Any) -> torch.Tensor:
        """The trace's quasi-hidden-state prediction [T, k] for the MoE layer `distance` ahead of `layer`, mapped
        to this model's experts as the routing is."""
        rows = self.replay._by_step[self.replay.steps[self.cursor]].get(self.layer_map[layer])
        # the replayed layers may skip or repeat source layers: predict the source layer the target replays
        moe, src = list(self.spec.moe_layers), list(self.replay.header["moe_layers"])
        target = moe[min(moe.index(layer) + distance, len(moe) - 1)]
        src_d = src.index(self.layer_map[target]) - src.index(self.layer_map[layer])
        col = f"pred_d{src_d}" if src_d > 0 else "ranking"  # same source layer: its own routing is the target's
        if rows is None or col not in rows or any(len(p) == 0 for p in rows[col]):
            raise ConfigError(f"the trace {self.replay.path} has no {col} predictions for layer {self.layer_map[layer]}"
                              f" (recorded lookahead: {self.replay.header.get('lookahead')})")
        ranked = [map_experts(list(p), list(p)[: self.k_src], self.e_src, self.spec.num_experts, k)
                  for p in rows[col]]
        return torch.tensor(ranked, dtype=torch.long, device=device)

    def run_layer(self, layer, hidden, top_k_index, top_k_weights):
        idx, w = self.routing(layer, top_k_index.shape[0], hidden.device, top_k_weights.dtype)
        return self.inner.run_layer(layer, hidden, idx, w)
