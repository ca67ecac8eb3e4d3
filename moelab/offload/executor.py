"""OffloadExecutor: runs every MoE layer's experts out of the GPU expert cache.

For one layer call: read the router's choice (the one host sync per layer, which also reads
any prediction staged for later layers), score the policy's earlier prediction for this layer,
optionally swap the router's choice for the predicted experts (speculative execution), tell
the prefetch policy, ask the balancer where each needed expert runs, give missing GPU experts
a slot (the cache policy picks victims) and fetch them, then queue the prefetches and compute:
experts already resident first, so their work hides the fetches of the others. Tokens are grouped by
expert exactly as transformers' grouped path does, and per-(token, k) outputs are summed in
the same order, so the result does not depend on which experts were resident.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import torch

from moelab.core.types import (
    CacheView,
    ExpertKey,
    ModelSpec,
    Placement,
    Prediction,
    PrefetchRequest,
    RoutingEvent,
)
from moelab.offload.cache import GpuExpertCache, Slot
from moelab.offload.clock import clock_for
from moelab.offload.cpu_worker import CpuExpertWorker
from moelab.offload.kernels import ExpertKernel
from moelab.offload.store import ExpertStore
from moelab.offload.timeline import Timeline, TimelineRecorder
from moelab.offload.transfer import TransferEngine
from moelab.policies.base import Balancer, CachePolicy, PrefetchPolicy


@dataclass
class StepInfo:
    step: int
    phase: str
    num_tokens: int
    start: Any = None


@dataclass
class ExecutorCounters:
    """Counts kept on the host as decisions are made (times come from the timeline)."""

    wasted_bytes: int = 0
    prefetched_unused_evicted: int = 0
    prefetched_used: int = 0
    cpu_uses: int = 0
    evictions: int = 0
    routing: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)  # (step, layer, experts)
    # decode-phase prediction scores per layer: [experts predicted and used, experts used, experts predicted,
    # layer calls with a prediction]; the router's true choice counts, also under speculative execution
    recall: dict[int, list[int]] = field(default_factory=dict)
    # verification passes: (step, layer, experts of the pass's first token, tokens per expert over the pass):
    # the binary signal an autoregressive step would see vs the speculative frequency map (MoE-SpAc)
    signals: list[tuple[int, int, tuple[int, ...], dict[int, int]]] = field(default_factory=list)
    decode_layer_calls: int = 0
    spec_pairs: int = 0  # (token, k) pairs run under speculative execution ...
    spec_changed: int = 0  # ... of which the executed expert is not the router's choice


class OffloadExecutor:
    def __init__(
        self,
        store: ExpertStore,
        kernels: dict[int, ExpertKernel],
        spec: ModelSpec,
        capacity: int,
        device: torch.device,
        prefetch: PrefetchPolicy,
        cache_policy: CachePolicy,
        balancer: Balancer,
        max_prefetch_per_layer: int | None = None,
        cpu_dtype: torch.dtype | None = None,
        debug: bool = False,
    ):
        # debug mode (or MOELAB_DEBUG=1): assert that no slot is given to another expert while a layer still
        # needs it (see SlotGuard); off by default, it costs a set operation per expert
        self.slot_guard = SlotGuard() if debug or os.environ.get("MOELAB_DEBUG") == "1" else None
        self.store = store
        self.kernels = kernels
        self.spec = spec
        self.device = device
        self.clock = clock_for(device)
        self.cache = GpuExpertCache(store.layout, capacity, device)
        self.prefetch = prefetch
        self.cache_policy = cache_policy
        self.balancer = balancer
        self.max_prefetch_per_layer = max_prefetch_per_layer
        # A grouped GEMM pays ~1 us per group, empty or not, and a launch for each call: slots
        # of one layer closer than this many empty slots share a call.
        self.max_slot_gap = 8
        self.cpu_worker = CpuExpertWorker(store, kernels, dtype=cpu_dtype)  # for balancers using the CPU
        # Filled by moelab.models.lookahead: the routers' full logits (for speculative execution), and the
        # predictions computed while a layer runs, read by that layer's one sync.
        self.router_logits: dict[int, torch.Tensor] = {}
        self.recorder = TimelineRecorder(self.clock, self._compute_stream())
        self.transfers = TransferEngine(store, self.cache, self.recorder, device)
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def _compute_stream(self) -> Any:
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def reset(self) -> None:
        """Empty the cache, forget policy state and measurements (between runs that share the model)."""
        self.clock.synchronize()
        self.cache.clear()
        self.prefetch.reset(self.spec)
        self.cache_policy.reset(self.spec, self.cache.capacity)
        self.balancer.reset(self.spec)
        self.recorder = TimelineRecorder(self.clock, self._compute_stream())
        self.transfers.reset(self.recorder)
        self.counters = ExecutorCounters()
        self.cpu_worker.reset()
        self._step: StepInfo | None = None
        self._step_no = -1
        self._staged: dict[int, list[tuple[int, torch.Tensor]]] = {}  # source layer -> (target, ranked [T, k'])
        self._requested: dict[int, dict[int, float]] = {}  # layer -> expert -> priority, since the layer last ran
        self._candidates: dict[int, list[list[int]]] = {}  # layer -> per-token predicted experts
        self._plan: dict[ExpertKey, float] = {}  # the policy's latest requests (resident ones too) by priority
        self.router_logits = {}
        if self.slot_guard is not None:
            self.slot_guard.in_use.clear()

    def preload(self, keys: Sequence[ExpertKey]) -> None:
        """Make `keys` resident before a pass, through the demand path's copy and cache bookkeeping, and wait.

        For placements that are static by design (a cache policy's `preload`): their copies are set-up, not run
        cost, so they go to a throwaway timeline and the transfer counts are restored; the row's bytes, copies and
        copy times are the timed pass's alone. Uses free slots only (call it after `reset`).
        """
        keys = [k for k in dict.fromkeys(keys) if self.cache.lookup(k) is None]
        if not keys:
            return
        free = sum(s.key is None for s in self.cache.slots)
        if len(keys) > free:
            raise ValueError(f"preload of {len(keys)} experts needs free slots, {free} of {self.capacity} are free")
        recorder, nbytes, count = self.transfers.recorder, dict(self.transfers.bytes), dict(self.transfers.count)
        self.transfers.recorder = TimelineRecorder(self.clock, self._compute_stream())
        slots, pinned = [], set()
        try:
            for key in keys:  # free slots suffice (checked above): the demand path evicts nothing
                slot = self._fetch(key, pinned)
                assert slot is not None
                slots.append(slot)
            self.clock.synchronize()
        finally:
            self.transfers.recorder, self.transfers.bytes, self.transfers.count = recorder, nbytes, count
        for slot in slots:
            slot.ready = None  # known complete: the first use is a resident hit

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def view(self) -> CacheView:
        return self.cache.view(self.clock.done)

    def begin_step(self, phase: str, num_tokens: int) -> int:
        """Open a forward step (prefill, decode or verification); returns its number."""
        self._step_no += 1
        self._step = StepInfo(self._step_no, phase, num_tokens, self.recorder.mark())
        return self._step_no

    def end_step(self) -> None:
        """Close the step: let the prefetcher plan for the next one, mark the end of compute."""
        info = self._step
        assert info is not None, "end_step without begin_step"
        self._prefetch(self.prefetch.on_step_end(info.step, self.view()), pinned=set())
        self.recorder.step(info.step, info.phase, info.start, self.recorder.mark())
        self._step = None
        self.recorder.resolve()

    def finish(self) -> Timeline:
        """Wait for the device and resolve every mark; prefetched experts never used count as wasted."""
        tl = self.recorder.resolve(final=True)
        for slot in self.cache.slots:
            if slot.key is not None and slot.prefetched and not slot.used:
                self.counters.wasted_bytes += self.store.expert_bytes
        return tl

    # ------------------------------------------------------------------ slots
    def _allocate(self, key: ExpertKey, pinned: set[ExpertKey], below: float | None = None) -> Slot | None:
        """A slot for `key`: a free one, else a victim among unpinned residents.

        The policy's latest plan (its last prefetch requests) ranks victims in one space with its prefetches:
        experts it does not want go first (the cache policy picks among them); then the one it wants least.
        A prefetch of priority `below` only evicts the least wanted resident, and only if that one is wanted
        less than itself and not in use now; else it waits (an early prefetch must not cost an extra copy
        later: with the oracle's plan this is Belady's rule with prefetching).
        """
        slot = self.cache.free_slot()
        if slot is None:
            plan = self._plan
            victim = self.cache_policy.victim_where(lambda k: k not in plan and k not in pinned, self.cache.table)
            if victim is None and below is not None:  # a prefetch evicts only the least wanted resident
                if any(k not in plan for k in self.cache.table):  # unwanted ones exist but are in use: wait
                    return None
                least = min(self.cache.table, key=plan.__getitem__)
                if least in pinned or plan[least] >= below:
                    return None
                victim = least
            if victim is None:
                warm = [k for k in self.cache.table if k not in pinned]
                if not warm:
                    return None
                victim = min(warm, key=self._plan.__getitem__)
            slot = self.cache.lookup(victim)
            assert slot is not None
            if self.slot_guard is not None:
                self.slot_guard.check(slot.index, key)
            if slot.prefetched and not slot.used:
                self.counters.wasted_bytes += self.store.expert_bytes
                self.counters.prefetched_unused_evicted += 1
            self.cache.unbind(slot)
            self.cache_policy.on_evict(victim)
            self.counters.evictions += 1
        return slot

    def _fetch(self, key: ExpertKey, pinned: set[ExpertKey]) -> Slot | None:
        slot = self._allocate(key, pinned)
        if slot is None:
            return None
        self.transfers.drop(key)
        ready = self.transfers.copy_in(key, slot, "demand", self._step_no)
        self.cache.bind(slot, key, ready, prefetched=False)
        self.cache_policy.on_insert(key)
        pinned.add(key)
        return slot

    def _prefetch(self, requests: Sequence[PrefetchRequest], pinned: set[ExpertKey]) -> None:
        if requests:
            self.transfers.submit(requests)
            self._plan = {}  # the latest plan replaces the last
            for r in requests:
                self._plan[r.key] = max(r.priority, self._plan.get(r.key, r.priority))
                if r.fetch:  # what the policy asks to fetch for a layer is its prediction for it
                    wanted = self._requested.setdefault(r.key.layer, {})
                    wanted[r.key.expert] = max(r.priority, wanted.get(r.key.expert, r.priority))
        if not self.transfers.queue:
            return

        def allocate(key: ExpertKey, priority: float) -> Slot | None:
            slot = self._allocate(key, pinned, below=priority)
            if slot is not None:
                self.cache_policy.on_insert(key)
            return slot

        self.transfers.pump(allocate, self._step_no, self.max_prefetch_per_layer)

    # ------------------------------------------------------------------ predictions
    def stage_prediction(self, source: int, target: int, ranked: torch.Tensor) -> None:
        """A prediction [T, k'] for layer `target`, computed on the device before layer `source`'s experts run;
        it is read by `source`'s own sync, so predicting costs no extra host round trip."""
        self._staged.setdefault(source, []).append((target, ranked))

    def predict_now(self, source: int, target: int, ranked: torch.Tensor) -> None:
        """A prediction made after `source`'s experts ran (it waits for the device) and acted on at once."""
        if self._step is None:
            return
        rows = ranked.tolist()
        self._prefetch(self._dispatch([(target, rows)], source), pinned=set())

    def _dispatch(self, predictions: list[tuple[int, list[list[int]]]], source: int) -> list[PrefetchRequest]:
        info = self._step
        assert info is not None
        requests: list[PrefetchRequest] = []
        view = self.view()
        for target, rows in predictions:
            if self.prefetch.speculative_execution:
                self._candidates[target] = rows
            pred = Prediction(info.step, source, target, info.phase, tuple(tuple(r) for r in rows))
            requests.extend(self.prefetch.on_prediction(pred, view))
        return requests

    def _score(self, layer: int, phase: str, true_experts: set[int]) -> None:
        """Compare what the policy asked for, for this layer, with what the router chose."""
        wanted = self._requested.pop(layer, None)
        after_prefill = phase in ("decode", "verify")
        self.counters.decode_layer_calls += after_prefill
        if wanted is not None and after_prefill:
            acc = self.counters.recall.setdefault(layer, [0, 0, 0, 0])
            acc[0] += len(true_experts & wanted.keys())
            acc[1] += len(true_experts)
            acc[2] += len(wanted)
            acc[3] += 1

    def _speculate(
        self, layer: int, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, wanted: dict[int, float] | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The predicted experts to run instead of the router's choice, and their weights (on the device).

        Per token: the candidates are its predicted experts (or, for predictors without per-token
        predictions, every expert requested for the layer); the top_k of them by the router's own
        logits run, weighted by the router's softmax renormalised over them and scaled to the mass
        the router's own top_k weights had (1 for models that normalise). Tokens with fewer than
        top_k candidates complete them with the router's choice. Without router logits (routing
        replay) the first top_k candidates run with the router's weights.
        """
        rows = self._candidates.pop(layer, None)
        if rows is None and wanted:
            shared = sorted(wanted, key=lambda e: -wanted[e])
            rows = [shared] * top_k_index.shape[0]
        if not rows or len(rows) != top_k_index.shape[0]:
            return None
        dev, k = top_k_index.device, top_k_index.shape[1]
        width = max(len(r) for r in rows)
        cand = torch.tensor([list(r) + [-1] * (width - len(r)) for r in rows], dtype=torch.long, device=dev)
        cand = torch.cat([cand, top_k_index], dim=1)  # the router's choice completes short candidate lists
        dup = (top_k_index[:, :, None] == cand[:, None, :width]).any(-1)
        logits = self.router_logits.pop(layer, None)
        if logits is None:  # rank by position: candidates in their order, then the router's choice
            key = -torch.arange(cand.shape[1], device=dev, dtype=torch.float32).expand(cand.shape[0], -1).clone()
        else:
            key = logits.float().reshape(cand.shape[0], -1).gather(1, cand.clamp(min=0))
        key[:, width:] -= 1e9  # used only where a token has fewer than top_k candidates
        key = key.masked_fill(torch.cat([cand[:, :width] < 0, dup], dim=1), float("-inf"))
        pick = key.topk(k, dim=1).indices
        idx = cand.gather(1, pick)
        if logits is None:
            return idx, top_k_weights
        w = torch.softmax(key.gather(1, pick), dim=1) * top_k_weights.float().sum(dim=1, keepdim=True)
        return idx, w.to(top_k_weights.dtype)

    # ------------------------------------------------------------------ the MoE layer
    def run_layer(
        self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Experts of one MoE layer for `hidden` [T, H] routed as `top_k_index`/`top_k_weights` [T, K]."""
        if self._step is None:  # a forward outside begin/end_step (e.g. a user calling the model directly)
            self.begin_step("forward", hidden.shape[0])
            try:
                return self.run_layer(layer, hidden, top_k_index, top_k_weights)
            finally:
                self.end_step()
        info = self._step
        rec = self.recorder
        wanted = self._requested.get(layer)
        speculated = self._speculate(layer, top_k_index, top_k_weights, wanted) \
            if self.prefetch.speculative_execution else None
        staged = self._staged.pop(layer, [])
        parts = [top_k_index.reshape(-1)]
        if speculated is not None:
            parts.append(speculated[0].reshape(-1))
        parts += [t.reshape(-1).to(top_k_index.dtype) for _, t in staged]
        before_sync = rec.mark()
        # the one host sync per layer: the router's choice, what runs instead of it, the staged predictions
        values = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()
        rec.gap(before_sync, rec.mark())
        n = top_k_index.numel()
        true_choice, pos = values[:n], n
        self._score(layer, info.phase, set(true_choice))
        chosen = true_choice
        if speculated is not None:
            chosen, pos = values[pos : pos + n], pos + n
            top_k_index, top_k_weights = speculated
            self.counters.spec_pairs += n
            k = top_k_index.shape[1]
            self.counters.spec_changed += sum(
                e not in true_choice[t - t % k : t - t % k + k] for t, e in enumerate(chosen)
            )
        predictions = []
        for target, ranked in staged:
            width = ranked.shape[-1]
            flat = values[pos : pos + ranked.numel()]
            pos += ranked.numel()
            predictions.append((target, [flat[i : i + width] for i in range(0, len(flat), width)]))
        counts = Counter(chosen)
        if info.phase == "verify":
            k = top_k_index.shape[1]
            self.counters.signals.append((info.step, layer, tuple(sorted(set(true_choice[:k]))),
                                          dict(Counter(true_choice))))
        experts = sorted(counts)
        ncounts = [counts[e] for e in experts]
        self.counters.routing.append((info.step, layer, tuple(experts)))
        event = RoutingEvent(info.step, layer, info.phase, hidden.shape[0], tuple(experts), tuple(ncounts))
        view = self.view()
        requests = list(self.prefetch.on_routing(event, view))
        self.cache_policy.observe(event)
        if predictions:
            requests += self._dispatch(predictions, layer)
        placement = self.balancer.assign(layer, experts, ncounts, view)

        batch = LayerBatch(hidden, top_k_index, top_k_weights, experts, ncounts, self._out_dtype(top_k_weights))
        cpu = [e for e in experts if placement.get(e, Placement.GPU) is Placement.CPU]
        gpu = [e for e in experts if placement.get(e, Placement.GPU) is not Placement.CPU]
        job = None
        if cpu:  # started first: the CPU computes while this thread issues the GPU work of the layer
            job = self.cpu_worker.submit(layer, cpu, batch)
            self.counters.cpu_uses += len(cpu)
        self._run_gpu_experts(layer, gpu, batch, requests)
        if job is not None:
            self.cpu_worker.finish(job, batch)
        if self.transfers.queue:  # this layer's experts are free to go now: prefetches that waited may start
            self._prefetch((), pinned=set())
        return batch.combine()

    def _out_dtype(self, routing: torch.Tensor) -> torch.dtype:
        """dtype of (expert output x routing weight), as transformers combines them."""
        return torch.promote_types(self.store.layout.tensors[0].dtype, routing.dtype)

    def _compute(self, layer: int, group: list[int], batch: LayerBatch) -> None:
        """Grouped expert computation for `group` (all resident): one call per run of nearby slots."""
        slot_of = {e: self.cache.table[ExpertKey(layer, e)] for e in group}
        order = sorted(group, key=slot_of.__getitem__)
        dev = batch.hidden.device
        kernel = self.kernels[layer]
        for seg in slot_segments([slot_of[e] for e in order], self.max_slot_gap):
            lo, hi = seg[0], seg[-1]
            counts = [0] * (hi - lo + 1)
            rows: list[int] = []
            row_slots: list[int] = []
            for e in order[: len(seg)]:
                a, b = batch.offsets[e]
                counts[slot_of[e] - lo] = b - a
                rows.extend(range(a, b))
                row_slots.extend([slot_of[e] - lo] * (b - a))
            order = order[len(seg):]
            # one host-to-device copy for all the index data of the segment
            packed = torch.tensor([*rows, *accumulate(counts), *(row_slots if kernel.has_bias else ())], device=dev)
            n = len(rows)
            idx, offs = packed[:n], packed[n : n + len(counts)].to(torch.int32)
            slots_t = packed[n + len(counts) :] if kernel.has_bias else None
            pools = {name: pool[lo : hi + 1] for name, pool in self.cache.pools.items()}
            y = kernel(batch.routed[idx], pools, offs, slots_t, counts)
            batch.rows[batch.perm[idx]] = y * batch.routed_w[idx].unsqueeze(-1)

    def _run_gpu_experts(
        self, layer: int, experts: list[int], batch: LayerBatch, requests: Sequence[PrefetchRequest]
    ) -> None:
        """Resident experts in one grouped call (hiding the demand fetches), then the fetched ones."""
        info = self._step
        assert info is not None
        pinned: set[ExpertKey] = set()
        present: list[int] = []
        missing: list[int] = []
        kinds: dict[int, str] = {}
        for e in experts:
            slot = self.cache.lookup(ExpertKey(layer, e))
            if slot is None:
                missing.append(e)
                continue
            pinned.add(slot.key)
            if slot.ready is not None and self.clock.done(slot.ready):
                slot.ready = None
            kinds[e] = "resident" if slot.ready is None else "inflight"
            present.append(e)

        fetched: list[int] = []
        guard = self.slot_guard
        if guard is not None:
            guard.claim(layer, present, self.cache.table)

        def fetch_more() -> None:
            while missing and self._fetch(ExpertKey(layer, missing[0]), pinned) is not None:
                kinds[missing[0]] = "demand"
                fetched.append(missing.pop(0))
                if guard is not None:
                    guard.claim(layer, fetched[-1:], self.cache.table)

        fetch_more()
        self._prefetch(requests, pinned)  # queued behind this layer's demand copies
        group = present
        while True:
            if group:
                self._use_group(layer, group, kinds, batch)
                for e in group:
                    pinned.discard(ExpertKey(layer, e))
                if guard is not None:
                    guard.release(layer, group, self.cache.table)
            fetch_more()
            group, fetched = fetched, []
            if not group:
                break
        if missing:
            raise RuntimeError(f"layer {layer}: no slot for experts {missing} (capacity {self.cache.capacity})")

    def _use_group(self, layer: int, group: list[int], kinds: dict[int, str], batch: LayerBatch) -> None:
        """Wait for the group's copies on the compute stream, compute it, record uses and last use."""
        info = self._step
        assert info is not None
        rec = self.recorder
        stream = self._compute_stream()
        slots = [self.cache.lookup(ExpertKey(layer, e)) for e in group]
        pending = [s for s in slots if s.ready is not None]
        wait_start = None
        if pending:
            wait_start = rec.mark()
            if stream is not None:
                for s in pending:
                    stream.wait_event(s.ready)
            rec.stall(wait_start, rec.mark())
        for e, s in zip(group, slots):
            first_prefetched = s.prefetched and not s.used
            rec.use(info.step, s.key, kinds[e], first_prefetched, wait_start if s.ready is not None else None, s.ready)
            s.used = True
            self.counters.prefetched_used += first_prefetched
            self.cache_policy.on_access(s.key)
        self._compute(layer, group, batch)
        last = rec.mark() if stream is not None else None
        for s in slots:
            s.last_use = last


class SlotGuard:
    """Debug mode's bookkeeping, kept apart from the pinning it checks: the slots a layer call has found or
    fetched its experts in and not yet computed from. Giving one of them to another expert (an eviction by a
    demand fetch or a prefetch) would overwrite weights that are about to be read."""

    def __init__(self) -> None:
        self.in_use: dict[int, ExpertKey] = {}  # slot -> the expert a layer still needs from it

    def claim(self, layer: int, experts: Sequence[int], table: dict[ExpertKey, int]) -> None:
        for e in experts:
            key = ExpertKey(layer, e)
            self.in_use[table[key]] = key

    def release(self, layer: int, experts: Sequence[int], table: dict[ExpertKey, int]) -> None:
        for e in experts:
            self.in_use.pop(table[ExpertKey(layer, e)], None)

    def check(self, slot: int, incoming: ExpertKey) -> None:
        if slot in self.in_use:
            raise AssertionError(f"slot {slot} would be overwritten with {incoming} while {self.in_use[slot]} "
                                 "is still to be computed from it")


def slot_segments(slots: Sequence[int], max_gap: int) -> list[list[int]]:
    """Split ascending slot indices into runs whose inner gaps are at most `max_gap` empty slots."""
    out: list[list[int]] = []
    for s in slots:
        if out and s - out[-1][-1] - 1 <= max_gap:
            out[-1].append(s)
        else:
            out.append([s])
    return out


class LayerBatch:
    """One layer call's (token, k) pairs grouped by expert, as transformers' grouped path orders them."""

    def __init__(self, hidden, top_k_index, top_k_weights, experts, counts, out_dtype):
        self.hidden = hidden
        self.num_tokens, self.top_k = top_k_index.shape
        _, self.perm = torch.sort(top_k_index.reshape(-1))
        self.routed = hidden[self.perm // self.top_k]
        self.routed_w = top_k_weights.reshape(-1)[self.perm]
        self.offsets: dict[int, tuple[int, int]] = {}
        start = 0
        for e, c in zip(experts, counts):
            self.offsets[e] = (start, start + c)
            start += c
        self.rows = torch.empty(self.num_tokens * self.top_k, hidden.shape[-1], dtype=out_dtype, device=hidden.device)

    def combine(self) -> torch.Tensor:
        """Sum over each token's k experts, in k order (independent of which experts ran first)."""
        return self.rows.view(self.num_tokens, self.top_k, -1).sum(dim=1).to(self.hidden.dtype)
