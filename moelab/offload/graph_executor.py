"""GraphExecutor: the MoE layer as a pure function of device tensors, so a whole decode step can be one CUDA graph.

The eager executor (moelab.offload.executor) reads each layer's routing on the host and decides there; that
costs a sync and milliseconds of Python per layer. Here every per-layer decision is a tensor operation on the
device, over tables the step replays:

    router top_k_index [T, K]
      |  keys = layer * E + expert                    one flat key per (layer, expert)
      v
    table[keys] -> slot (or -1)                       expert -> slot map, a device tensor (vLLM's expert_map)
      |  misses: distinct keys with no slot
      v
    victims = least recently used slots               stamp[slot] = last step that used it; slots this layer
      |                                               pass uses are never victims
      v
    table / owner updated                             the one place residency changes (the choke point)
    gather_experts(host -> slot)                      zero-copy kernel over pinned memory; -1 entries copy nothing
      v
    grouped GEMM over the whole slot pool             offs = rows per slot; empty slots are empty groups
      v
    weighted rows summed per token in k order         -> [T, H], as the eager executor and transformers sum

The host sees a step once, after it ran: `end_step` reads the step's log (keys, misses, evictions of every
layer) in one transfer and turns it into the same counters and timeline uses the eager executor records. The
cache rule is LRU on the device (exact, not a step behind); policies that need per-layer Python decisions run
on the eager executor (moelab.offload.graph_plan says which runs can take this path).

Exactness: every routed expert runs with its own weights; a layer's outputs are bitwise the eager executor's on
the CPU (tests/test_graph_executor.py), whatever was resident.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from moelab.core.types import ExpertKey
from moelab.offload.executor import OffloadExecutor, StepInfo
from moelab.offload.gather import device_view, gather_experts

NEVER = -1  # stamp of a slot never used (evicted first)
MAX_GROUPS = 1000  # fewer groups than one torch grouped GEMM refuses ("Can't process more than 1024 groups")


class GraphExecutor(OffloadExecutor):
    """The executor whose layer code can be captured: device tables, device LRU, one host read per step."""

    spare_slots = 1  # pool row C: where gathers that copy nothing point (never computed from)
    captures = True  # moelab.decoding.steps replays decode steps of this backend as CUDA graphs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tables_ready = False
        super().__init__(*args, **kwargs)
        spec, dev, cap = self.spec, self.device, self.capacity
        self.layer_index = {layer: i for i, layer in enumerate(spec.moe_layers)}
        self.num_keys = len(spec.moe_layers) * spec.num_experts
        long = torch.long
        self.table = torch.full((self.num_keys + 1,), -1, dtype=long, device=dev)  # [L*E + 1] key -> slot; last: spare
        self.owner = torch.full((cap + 1,), -1, dtype=long, device=dev)  # [C + 1] slot -> key, -1 empty; last: spare
        self.stamp = torch.full((cap + 1,), NEVER, dtype=long, device=dev)  # [C + 1] last step that used the slot
        self.step_clock = torch.zeros((), dtype=long, device=dev)  # [] step counter, advanced inside the step
        self.slot_ids = torch.arange(cap + 1, dtype=long, device=dev)  # [C + 1]
        self.host = {layer: {n: device_view(t, dev) for n, t in self.store.layer_tensors(layer).items()}
                     for layer in self.store.layers}
        self.first_layer = spec.moe_layers[0]
        self.capturing = False
        self.graph_steps: dict[Any, Any] = {}  # moelab.decoding.steps.GraphStep per (batch, max_len), kept
        self._log: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._tables_ready = True
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        super().reset()
        if self._tables_ready:  # in place: captured graphs keep pointing at these tensors
            self.table.fill_(-1)
            self.owner.fill_(-1)
            self.stamp.fill_(NEVER)
            self.step_clock.zero_()
            self._log = []

    def preload(self, keys: Any) -> None:
        if list(keys):
            raise NotImplementedError("the graph executor keeps no preloaded experts (cache=static runs eagerly)")

    @contextmanager
    def capture(self) -> Any:
        """While a step is captured: no host reads, no step bookkeeping; the log's tensors become the graph's."""
        self.capturing = True
        self._log = []
        try:
            yield
        finally:
            self.capturing = False

    def take_log(self) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The layer log of what just ran or was captured (the captured one is rewritten by every replay)."""
        log, self._log = self._log, []
        return log

    def use_log(self, log: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """The log `end_step` reads: a replayed graph's."""
        self._log = list(log)
        self.counters.graph_replays += 1

    def begin_step(self, phase: str, num_tokens: int) -> int:
        self._log = []
        return super().begin_step(phase, num_tokens)

    def _after_step(self, info: StepInfo) -> None:
        """Read the step's log once and record what it did: routing, hits, demand copies, evictions (no host
        prefetcher runs on this path: moelab.offload.graph_plan admits prefetch=none only)."""
        log, self._log = self._log, []
        if not log:
            return
        parts = [torch.stack([keys, need.long(), evicted.long()]).reshape(-1) for _, keys, need, evicted in log]
        flat = torch.cat(parts).tolist()  # the step's one device -> host read: [3 * N] per layer part
        self.counters.host_reads_decode += info.phase != "prefill"
        E, nbytes = self.spec.num_experts, self.store.expert_bytes
        used: dict[int, set[int]] = {}
        missed: dict[int, set[int]] = {}
        pos = 0
        for layer, keys, _, _ in log:
            n = keys.numel()
            k, need, ev = flat[pos : pos + n], flat[pos + n : pos + 2 * n], flat[pos + 2 * n : pos + 3 * n]
            pos += 3 * n
            base = self.layer_index[layer] * E
            used.setdefault(layer, set()).update(key - base for key in k)
            missed.setdefault(layer, set()).update(k[i] - base for i in range(n) if need[i])
            self.counters.evictions += sum(ev)
        for layer, experts in used.items():
            self.counters.routing.append((info.step, layer, tuple(sorted(experts))))
            for e in sorted(experts):
                kind = "demand" if e in missed[layer] else "resident"
                self.recorder.use(info.step, ExpertKey(layer, e), kind, False, None, None)
            for e in sorted(missed[layer]):  # bytes by cause; a copy inside a graph has no host-visible times
                self.transfers.bytes["demand"] += nbytes
                self.transfers.count["demand"] += 1
                self.recorder.copy(ExpertKey(layer, e), nbytes, "demand", info.step, info.start, info.start)

    # ------------------------------------------------------------------ the MoE layer, on the device
    def run_layer(
        self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Experts of one MoE layer for `hidden` [T, H] routed as `top_k_index`/`top_k_weights` [T, K]."""
        if self._step is None and not self.capturing:  # a forward outside begin/end_step
            self.begin_step("forward", hidden.shape[0])
            try:
                return self.run_layer(layer, hidden, top_k_index, top_k_weights)
            finally:
                self.end_step()
        T, K = top_k_index.shape
        if layer == self.first_layer:
            self.step_clock += 1  # captured: every replay advances it
        _, perm = torch.sort(top_k_index.reshape(-1))  # [N] (token, k) pairs by expert, as transformers groups them
        keys = top_k_index.reshape(-1)[perm].long() + self.layer_index[layer] * self.spec.num_experts  # [N] ascending
        rows = torch.empty(T * K, hidden.shape[-1], dtype=self._out_dtype(top_k_weights), device=hidden.device)
        for part in self._parts(keys):
            slots = self._resolve(layer, keys[part])
            self._compute_rows(layer, hidden, top_k_weights, perm[part], slots, rows)
        for tap in self.output_taps:
            tap(layer, top_k_index, top_k_weights, rows)
        return rows.view(T, K, -1).sum(dim=1).to(hidden.dtype)  # [T, H] summed in k order

    def _parts(self, keys: torch.Tensor) -> list[slice]:
        """The pass in one part, or (a long prefill routing more distinct experts than there are slots; never
        while capturing) in runs of whole experts with at most `capacity` distinct experts each."""
        if keys.numel() <= self.capacity or self.capturing:
            return [slice(0, keys.numel())]
        flat = keys.tolist()  # eager prefill only: a host read is allowed here
        starts = [i for i in range(len(flat)) if i == 0 or flat[i] != flat[i - 1]]
        if len(starts) <= self.capacity:
            return [slice(0, len(flat))]
        bounds = starts[:: self.capacity] + [len(flat)]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def _resolve(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """Make every expert of `keys` [N] (ascending) resident, misses taking LRU victims that the pass does not
        use; returns each key's slot [N]."""
        C = self.capacity
        base = self.layer_index[layer] * self.spec.num_experts
        first = torch.ones_like(keys, dtype=torch.bool)  # [N] first pair of each distinct expert
        first[1:] = keys[1:] != keys[:-1]
        found = self.table[keys]  # [N] slot or -1
        need = first & (found < 0)  # [N] one entry per missing expert
        # victims: least recently used first, lower slot first among equals; slots used by this pass never
        big = torch.iinfo(torch.long).max
        prio = self.stamp * (C + 1) + self.slot_ids  # [C + 1] unique
        prio = prio.index_fill(0, torch.where(found >= 0, found, C), big)  # hits and the spare are kept
        victims = torch.topk(prio, min(keys.numel(), C), largest=False).indices  # [min(N, C)] best first
        rank = (torch.cumsum(need, 0) - 1).clamp(min=0, max=victims.numel() - 1)  # [N] which victim a miss takes
        new_slot = torch.where(need, victims[rank], C)  # [N] spare row: no copy
        old = self.owner[new_slot]  # [N] evicted key or -1
        evicted = need & (old >= 0)  # [N]
        spare_key = self.num_keys
        self.table.index_fill_(0, torch.where(evicted, old, spare_key), -1)  # (a scalar index_put_ would copy H2D)
        self.table[torch.where(need, keys, spare_key)] = new_slot
        self.owner[new_slot] = torch.where(need, keys, -1)
        src = torch.where(need, keys - base, -1)  # [N] expert within the layer, -1: nothing to copy
        for name, pool in self.pool.pools.items():
            gather_experts(pool, self.host[layer][name], new_slot, src)
        slots = self.table[keys]  # [N] every pair's slot
        self.stamp[slots] = self.step_clock
        self._log.append((layer, keys, need, evicted))
        return slots

    def _compute_rows(self, layer: int, hidden: torch.Tensor, top_k_weights: torch.Tensor, pairs: torch.Tensor,
                      slots: torch.Tensor, rows: torch.Tensor) -> None:
        """rows[pairs] = weighted expert outputs: one grouped GEMM per projection over the slot pool, rows grouped
        by slot (slots ascending, an expert's pairs in expert order); empty slots are empty groups. A pool of more
        slots than one grouped GEMM takes (MAX_GROUPS) is covered in windows: each window's call takes every row,
        those of other windows in one extra group (the slot past the window) whose results are dropped."""
        C, K = self.capacity, top_k_weights.shape[-1]
        kernel = self.kernels[layer]
        if C < MAX_GROUPS:  # one grouped GEMM over the whole pool
            by_slot, order = torch.sort(slots, stable=True)  # [n] within an expert: the expert order's pairs
            pairs = pairs[order]  # [n] (token, k) position of each row
            counts = torch.zeros(C, dtype=torch.long, device=slots.device).index_add_(
                0, slots, torch.ones_like(slots))  # [C] rows per slot
            offs = torch.cumsum(counts, 0).to(torch.int32)  # [C] group ends
            pools = {name: pool[:C] for name, pool in self.pool.pools.items()}
            out = kernel(hidden[pairs // K], pools, offs, by_slot if kernel.has_bias else None)  # [n, H]
            rows[pairs] = out * top_k_weights.reshape(-1)[pairs].unsqueeze(-1)
            return
        y: torch.Tensor | None = None
        window = MAX_GROUPS - 1
        for lo in range(0, C, window):
            hi = min(C, lo + window)  # slots [lo, hi) computed; slot hi (the spare row past the last) takes the rest
            inside = (slots >= lo) & (slots < hi)  # [n]
            group = torch.where(inside, slots - lo, hi - lo)  # [n] group of each row; hi - lo: the dropped group
            by_group, order = torch.sort(group, stable=True)  # [n] within an expert: the expert order's pairs
            counts = torch.zeros(hi - lo + 1, dtype=torch.long, device=slots.device).index_add_(
                0, group, torch.ones_like(group))  # [G] rows per group
            offs = torch.cumsum(counts, 0).to(torch.int32)  # [G] group ends
            pools = {name: pool[lo : hi + 1] for name, pool in self.pool.pools.items()}
            bias_rows = by_group if kernel.has_bias else None
            out = kernel(hidden[pairs[order] // K], pools, offs, bias_rows)  # [n, H] in group order
            part = torch.empty_like(out).index_copy_(0, order, out)  # [n, H] back in expert order
            y = part if y is None else torch.where(inside.unsqueeze(-1), part, y)
        assert y is not None
        rows[pairs] = y * top_k_weights.reshape(-1)[pairs].unsqueeze(-1)
