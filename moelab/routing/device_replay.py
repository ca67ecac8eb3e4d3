"""A replayed trace's routing as device tensors, so replayed steps can be captured as CUDA graphs.

`ReplayBackend` hands each layer call the trace's routing from host tensors it builds per (step, layer): a host
decision per layer, which a captured step cannot make. Here the whole trace is mapped once (the same mapping,
`ReplayBackend.routing`) into `idx` [S, L, T_max, K] and `weights` [S, L, T_max, K] on the device, and a device
cursor advanced at each step's first MoE layer picks the step: the captured graph reads the next step's routing
on every replay. The tensors live on the `ReplayRouting` (one per run), so a graph captured in one pass keeps
working in the next; each pass rewinds the cursor in place.
"""

from __future__ import annotations

from typing import Any

import torch

from moelab.core.errors import ConfigError
from moelab.routing.replay import ReplayBackend


class DeviceReplayTables:
    """The trace's routing for every step and MoE layer, padded to the longest step, on one device."""

    def __init__(self, backend: ReplayBackend, device: torch.device):
        replay, spec = backend.replay, backend.spec
        moe = list(spec.moe_layers)
        self.tokens: list[int] = []
        per_step = []
        for s, step in enumerate(replay.steps):
            backend.cursor = s
            rows = replay._by_step[step]
            n = len(next(iter(rows.values())))
            self.tokens.append(n)
            per_step.append([backend.routing(layer, n, torch.device("cpu"), torch.float32) for layer in moe])
        backend.cursor = -1
        t_max, k = max(self.tokens), spec.top_k
        S, L = len(per_step), len(moe)
        idx = torch.zeros(S, L, t_max, k, dtype=torch.long)  # [S, L, T_max, K]
        w = torch.zeros(S, L, t_max, k, dtype=torch.float32)  # [S, L, T_max, K]
        for s, layers in enumerate(per_step):
            for li, (i, wt) in enumerate(layers):
                idx[s, li, : i.shape[0]] = i
                w[s, li, : wt.shape[0]] = wt
        self.idx = idx.to(device)
        self.weights = w.to(device)
        self.cursor = torch.full((1,), -1, dtype=torch.long, device=device)  # [1] the step being run


class DeviceReplayBackend(ReplayBackend):
    """`ReplayBackend` over a capturing executor: the routing comes from device tables indexed by a device cursor."""

    captures = True

    def __init__(self, inner: Any, replay: Any, spec: Any, tables: DeviceReplayTables):
        super().__init__(inner, replay, spec)
        self.tables = tables
        self.layer_pos = {layer: i for i, layer in enumerate(spec.moe_layers)}
        self.first_layer = spec.moe_layers[0]
        tables.cursor.fill_(-1)  # a new pass starts at the trace's first step

    def reset(self) -> None:
        super().reset()
        self.tables.cursor.fill_(-1)

    # the capturing executor's interface, passed through
    @property
    def graph_steps(self) -> dict[Any, Any]:
        return self.inner.graph_steps

    def capture(self) -> Any:
        return self.inner.capture()

    def take_log(self) -> Any:
        return self.inner.take_log()

    def use_log(self, log: Any) -> None:
        self.inner.use_log(log)

    def begin_step(self, phase: str, num_tokens: int) -> int:
        step = super().begin_step(phase, num_tokens)
        if num_tokens != self.tables.tokens[self.cursor]:
            raise ConfigError(f"trace step {self.cursor} has {self.tables.tokens[self.cursor]} tokens, the run has "
                              f"{num_tokens}: replay the trace's own workload")
        return step

    def run_layer(self, layer, hidden, top_k_index, top_k_weights):
        T = top_k_index.shape[0]
        t = self.tables
        if layer == self.first_layer:
            t.cursor += 1  # captured: every replay moves to the next step
        li = self.layer_pos[layer]
        idx = t.idx.index_select(0, t.cursor)[0, li, :T]  # [T, K]
        w = t.weights.index_select(0, t.cursor)[0, li, :T].to(top_k_weights.dtype)  # [T, K]
        return self.inner.run_layer(layer, hidden, idx, w)
