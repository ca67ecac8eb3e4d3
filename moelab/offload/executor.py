"""OffloadExecutor: the mechanism that runs every MoE layer's experts out of device slots.

It holds the expert store (host), the slot pool (device), the transfer engine, the CPU worker, the expert
kernels and the timeline; the decisions are the policies' (moelab.policies) and the `execution.*` rules
(moelab.core.types.Execution); the measurements are the observers' (moelab.observers). One layer call:

    router top_k_index [T, K] (+ speculative candidates, staged predictions)
      |  HostRead.read()            the layer's one device->host sync
      v
    speculative execution?          execution.speculative: none | router | predicted (with true_router=skip
                                    the prediction arrives as the router's output: nothing to replace)
      v
    observers.on_layer(LayerCall)   recall, signals, spec-exec changes (measure only)
    prefetch.on_routing / on_prediction -> PrefetchRequests
    balancer.assign                 expert -> GPU | CPU
      v
    CPU worker.submit(cpu experts)  runs alongside everything below
    demand fetch (missing experts)  victims: execution.eviction rule + cache policy
    transfers.pump(prefetches)      queued behind this layer's demand copies
      v
    compute groups                  execution.compute_order: resident first (hides the fetches) | router
      |  slot_segments              execution.max_slot_gap: nearby slots share one grouped kernel call
      v
    LayerBatch.combine()            per-(token, k) outputs summed in k order -> [T, H] (moelab.offload.layer_batch)

Tokens are grouped by expert exactly as transformers' grouped path does and summed in the same order, so the
result does not depend on which experts were resident (bitwise equal to the plain model on the CPU).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import torch

from moelab.core.context import RunContext
from moelab.core.types import (
    CacheView,
    Execution,
    ExpertKey,
    LayerCall,
    ModelSpec,
    Placement,
    Prediction,
    PrefetchRequest,
    RoutingEntry,
    RoutingEvent,
)
from moelab.observers.base import Observers
from moelab.offload.clock import clock_for
from moelab.offload.cpu_worker import CpuExpertWorker
from moelab.offload.kernels import ExpertKernel
from moelab.offload.layer_batch import LayerBatch
from moelab.offload.slots import Slot, SlotPool
from moelab.offload.store import ExpertStore
from moelab.offload.timeline import Timeline, TimelineRecorder
from moelab.offload.transfer import TransferEngine
from moelab.policies.base import Balancer, CachePolicy, PrefetchPolicy, run_context
from moelab.policies.eviction import eviction_rule


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
    host_reads_decode: int = 0  # device -> host reads the executor made in decode steps (eager: one per layer)
    graph_replays: int = 0  # decode steps replayed as one CUDA graph
    # what ran: (step, layer, experts executed) per layer call; also the future routing of an in-sample profile
    routing: list[RoutingEntry] = field(default_factory=list)  # a RoutingLog


class OffloadExecutor:
    spare_slots = 0  # pool rows past the capacity (moelab.offload.graph_executor uses one)
    captures = False  # whether moelab.decoding.steps may capture this backend's decode steps as CUDA graphs

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
        execution: Execution | None = None,
        observers: Observers | None = None,
        debug: bool = False,
        context: RunContext | None = None,
    ):
        # debug mode (or MOELAB_DEBUG=1): assert that no slot is given to another expert while a layer still
        # needs it (see SlotGuard); off by default, it costs a set operation per expert
        self.slot_guard = SlotGuard() if debug or os.environ.get("MOELAB_DEBUG") == "1" else None
        self.store = store
        self.kernels = kernels
        self.spec = spec
        self.device = device
        self.clock = clock_for(device)
        self.pool = SlotPool(store.layout, capacity, device, spare=self.spare_slots)
        self.prefetch = prefetch
        self.cache_policy = cache_policy
        self.balancer = balancer
        self.max_prefetch_per_layer = max_prefetch_per_layer
        self.execution = execution or Execution()
        self.eviction = eviction_rule(self.execution.eviction)
        self.observers = observers if observers is not None else Observers()
        self.cpu_worker = CpuExpertWorker(store, kernels, dtype=cpu_dtype)  # for balancers using the CPU
        # Filled by moelab.models.lookahead: the routers' full logits (for speculative execution), and the
        # predictions computed while a layer runs, read by that layer's one sync.
        self.router_logits: dict[int, torch.Tensor] = {}
        # Called after each layer call with (layer, top_k_index, top_k_weights, weighted per-(token, k) outputs
        # [T*K, H]): estimators of the experts' outputs (moelab.models.lookahead's default vectors) read them.
        self.output_taps: list[Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]] = []
        self.recorder = TimelineRecorder(self.clock, self._compute_stream())
        self.transfers = TransferEngine(store, self.pool, self.recorder, device)
        # the run context every component is bound to; by default the prefetch policy's estimators are shared
        self.bind(context if context is not None else run_context(spec, capacity, prefetch))
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def _compute_stream(self) -> Any:
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def bind(self, context: RunContext) -> None:
        """Bind the policies and observers to the run's context (again after a profile pass adds `future`).
        Binding keeps their history; `reset` forgets it."""
        self.context = context
        for part in (self.prefetch, self.cache_policy, self.balancer, self.observers):
            part.bind(context)

    def reset(self) -> None:
        """Empty the slots, forget policy state and measurements (between passes that share the model)."""
        self.clock.synchronize()
        self.pool.clear()
        self.prefetch.reset()
        self.cache_policy.reset()
        self.balancer.reset()
        self.recorder = TimelineRecorder(self.clock, self._compute_stream())
        self.transfers.reset(self.recorder)
        self.counters = ExecutorCounters()
        self.observers.reset()
        self.cpu_worker.reset()
        self._step: StepInfo | None = None
        self._step_no = -1
        self._staged: dict[int, list[tuple[int, torch.Tensor]]] = {}  # source layer -> (target, ranked [T, k'])
        self._requested: dict[int, dict[int, float]] = {}  # layer -> expert -> priority, since the layer last ran
        self._candidates: dict[int, list[list[int]]] = {}  # layer -> per-token predicted experts
        self._predicted_logits: dict[int, torch.Tensor] = {}  # layer -> predicted router logits [T, E]
        self._router_skipped: set[int] = set()  # layers whose routing the prediction gave, the router not run
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
        keys = [k for k in dict.fromkeys(keys) if self.pool.lookup(k) is None]
        if not keys:
            return
        free = sum(s.key is None for s in self.pool.slots)
        if len(keys) > free:
            raise ValueError(f"preload of {len(keys)} experts needs free slots, {free} of {self.capacity} are free")
        recorder, nbytes, count = self.transfers.recorder, dict(self.transfers.bytes), dict(self.transfers.count)
        self.transfers.recorder = TimelineRecorder(self.clock, self._compute_stream())
        slots: list[Slot] = []
        pinned: set[ExpertKey] = set()
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
        return self.pool.capacity

    def view(self) -> CacheView:
        return self.pool.view(self.clock.done)

    def begin_step(self, phase: str, num_tokens: int) -> int:
        """Open a forward step (prefill, decode or verification); returns its number."""
        self._step_no += 1
        self._step = StepInfo(self._step_no, phase, num_tokens, self.recorder.mark())
        return self._step_no

    def end_step(self) -> None:
        """Close the step: let the prefetcher plan for the next one, mark the end of compute."""
        info = self._step
        assert info is not None, "end_step without begin_step"
        self._after_step(info)
        self.recorder.step(info.step, info.phase, info.start, self.recorder.mark())
        self._step = None
        self.recorder.resolve()

    def _after_step(self, info: StepInfo) -> None:
        """What the host does once a step's work is issued: here, the prefetcher plans for the next step."""
        self._prefetch(self.prefetch.on_step_end(info.step, self.view()), pinned=set())

    def finish(self) -> Timeline:
        """Wait for the device and resolve every mark; prefetched experts never used count as wasted."""
        tl = self.recorder.resolve(final=True)
        for slot in self.pool.slots:
            if slot.key is not None and slot.prefetched and not slot.used:
                self.counters.wasted_bytes += self.store.expert_bytes
        return tl

    # ------------------------------------------------------------------ slots
    def _allocate(self, key: ExpertKey, pinned: set[ExpertKey], below: float | None = None) -> Slot | None:
        """A slot for `key`: a free one, else the victim the eviction rule names (moelab.policies.eviction);
        `below` is a prefetch's priority (None on demand). None: no slot now."""
        slot = self.pool.free_slot()
        if slot is None:
            victim = self.eviction.victim(resident=self.pool.table, pinned=pinned, plan=self._plan,
                                          policy=self.cache_policy, below=below)
            if victim is None:
                return None
            slot = self.pool.lookup(victim)
            assert slot is not None
            if self.slot_guard is not None:
                self.slot_guard.check(slot.index, key)
            if slot.prefetched and not slot.used:
                self.counters.wasted_bytes += self.store.expert_bytes
                self.counters.prefetched_unused_evicted += 1
            self.pool.unbind(slot)
            self.cache_policy.on_evict(victim)
            self.counters.evictions += 1
        return slot

    def _fetch(self, key: ExpertKey, pinned: set[ExpertKey]) -> Slot | None:
        slot = self._allocate(key, pinned)
        if slot is None:
            return None
        self.transfers.drop(key)
        ready = self.transfers.copy_in(key, slot, "demand", self._step_no)
        self.pool.bind(slot, key, ready, prefetched=False)
        self.cache_policy.on_insert(key)
        pinned.add(key)
        return slot

    def _prefetch(self, requests: Sequence[PrefetchRequest], pinned: set[ExpertKey]) -> None:
        if requests:
            self.transfers.submit(requests)
            self.observers.on_requests(self._step_no, requests)
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
    def stage_prediction(self, source: int, target: int, ranked: torch.Tensor,
                         logits: torch.Tensor | None = None) -> None:
        """A prediction [T, k'] for layer `target`, computed on the device before layer `source`'s experts run;
        it is read by `source`'s own sync, so predicting costs no extra host round trip. `logits` [T, E]: the
        predicted router logits, for `execution.speculative=predicted` (they stay on the device)."""
        self._staged.setdefault(source, []).append((target, ranked))
        if logits is not None:
            self._predicted_logits[target] = logits

    def predict_now(self, source: int, target: int, ranked: torch.Tensor,
                    logits: torch.Tensor | None = None) -> None:
        """A prediction made after `source`'s experts ran (it waits for the device) and acted on at once."""
        if self._step is None:
            return
        if logits is not None:
            self._predicted_logits[target] = logits
        rows = ranked.tolist()
        self._prefetch(self._dispatch([(target, rows)], source), pinned=set())

    def _dispatch(self, predictions: list[tuple[int, list[list[int]]]], source: int) -> list[PrefetchRequest]:
        info = self._step
        assert info is not None
        requests: list[PrefetchRequest] = []
        view = self.view()
        for target, rows in predictions:
            if self.execution.speculates:
                self._candidates[target] = rows
            pred = Prediction(info.step, source, target, info.phase, tuple(tuple(r) for r in rows))
            requests.extend(self.prefetch.on_prediction(pred, view))
        return requests

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
        if self.execution.speculative == "predicted":
            return self._run_predicted(rows, self._predicted_logits.pop(layer, None), top_k_index, top_k_weights)
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

    def predicted_routing(self, layer: int, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Under `execution.speculative=predicted`, the experts and weights layer `layer` will run in place of the
        router's `top_k_index`/`top_k_weights` (nothing consumed), else None. The released code's default-vector
        state combines layer l's default vectors with these: its true router is never computed."""
        if self.execution.speculative != "predicted":
            return None
        return self._run_predicted(self._candidates.get(layer), self._predicted_logits.get(layer), top_k_index,
                                   top_k_weights)

    @staticmethod
    def _run_predicted(
        rows: list[list[int]] | None, logits: torch.Tensor | None, top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`execution.speculative=predicted`: each token runs its predicted top_k with the softmax of the predictor's
        scores over them (layer l+d's router logits on the quasi-hidden state, as Speculating Experts' released code
        does, or a learned MLP's scores); the true router's choice and weights are not used. A layer without a
        prediction (the first `distance` MoE layers of a step) runs the router's choice."""
        return OffloadExecutor._predicted_top_k(rows, logits, top_k_index.shape[0], top_k_index.shape[1],
                                                top_k_index.dtype, top_k_weights.dtype, top_k_index.device)

    @staticmethod
    def _predicted_top_k(
        rows: list[list[int]] | None, logits: torch.Tensor | None, num_tokens: int, k: int,
        index_dtype: torch.dtype, weight_dtype: torch.dtype, device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The predicted top_k [T, K] and their softmax weights [T, K], in the dtypes the router returns; None
        without a usable prediction (none, another token count, or fewer than k experts for a token)."""
        if rows is None or logits is None or len(rows) != num_tokens or min(map(len, rows)) < k:
            return None
        idx = torch.tensor([r[:k] for r in rows], dtype=index_dtype, device=device)  # [T, K]
        w = torch.softmax(logits.float().reshape(idx.shape[0], -1).gather(1, idx), dim=1)  # [T, K]
        return idx, w.to(weight_dtype)

    def routing_instead_of_router(
        self, layer: int, num_tokens: int, k: int, index_dtype: torch.dtype, weight_dtype: torch.dtype,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`execution.true_router=skip`: the predicted experts and weights that stand for layer `layer`'s router
        output (its prediction consumed; the layer call then runs them as they are, without speculating again),
        or None where the layer has no prediction and its router must run."""
        ran = self._predicted_top_k(self._candidates.pop(layer, None), self._predicted_logits.pop(layer, None),
                                    num_tokens, k, index_dtype, weight_dtype, device)
        if ran is not None:
            self._router_skipped.add(layer)
        return ran

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
        wanted = self._requested.pop(layer, None)
        skipped = layer in self._router_skipped  # the prediction came in place of the router's output
        self._router_skipped.discard(layer)
        speculated = self._speculate(layer, top_k_index, top_k_weights, wanted) \
            if self.execution.speculates and not skipped else None
        staged = self._staged.pop(layer, [])
        read = HostRead(top_k_index)  # the router's choice [T, K], or the prediction standing for it
        if speculated is not None:
            read.add(speculated[0])  # what runs instead of it [T, K]
        for _, ranked in staged:
            read.add(ranked)  # predictions for later layers [T, k']
        before_sync = rec.mark()
        true_choice, *rest = read.read()  # the layer's one host sync
        self.counters.host_reads_decode += info.phase != "prefill"
        rec.gap(before_sync, rec.mark())
        chosen = true_choice
        if speculated is not None:
            chosen, *rest = rest
            top_k_index, top_k_weights = speculated
        predictions = [(target, HostRead.rows(flat, ranked.shape[-1])) for (target, ranked), flat in zip(staged, rest)]
        self.observers.on_layer(LayerCall(info.step, layer, info.phase, top_k_index.shape[1],
                                          None if skipped else tuple(true_choice), tuple(chosen),
                                          skipped or speculated is not None))
        counts = Counter(chosen)
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

        batch = LayerBatch.group(hidden, top_k_index, top_k_weights, experts, ncounts,
                                 self._out_dtype(top_k_weights))
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
        for tap in self.output_taps:
            tap(layer, top_k_index, top_k_weights, batch.tensors.rows)
        return batch.combine()

    def _out_dtype(self, routing: torch.Tensor) -> torch.dtype:
        """dtype of (expert output x routing weight), as transformers combines them."""
        return torch.promote_types(self.store.layout.tensors[0].dtype, routing.dtype)

    def _compute(self, layer: int, group: list[int], batch: LayerBatch) -> None:
        """Grouped expert computation for `group` (all resident): one call per run of nearby slots."""
        slot_of = {e: self.pool.table[ExpertKey(layer, e)] for e in group}
        order = sorted(group, key=slot_of.__getitem__)
        dev = batch.tensors.device
        kernel = self.kernels[layer]
        for seg in slot_segments([slot_of[e] for e in order], self.execution.max_slot_gap):
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
            idx, offs = packed[:n], packed[n : n + len(counts)].to(torch.int32)  # [n] rows, [S] group ends
            slots_t = packed[n + len(counts) :] if kernel.has_bias else None
            pools = {name: pool[lo : hi + 1] for name, pool in self.pool.pools.items()}
            batch.tensors.scatter(idx, kernel(batch.tensors.routed[idx], pools, offs, slots_t, counts))  # [n, H]

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
            slot = self.pool.lookup(ExpertKey(layer, e))
            if slot is None:
                missing.append(e)
                continue
            pinned.add(ExpertKey(layer, e))
            if slot.ready is not None and self.clock.done(slot.ready):
                slot.ready = None
            kinds[e] = "resident" if slot.ready is None else "inflight"
            present.append(e)

        fetched: list[int] = []
        guard = self.slot_guard
        if guard is not None:
            guard.claim(layer, present, self.pool.table)

        def fetch_more() -> None:
            while missing and self._fetch(ExpertKey(layer, missing[0]), pinned) is not None:
                kinds[missing[0]] = "demand"
                fetched.append(missing.pop(0))
                if guard is not None:
                    guard.claim(layer, fetched[-1:], self.pool.table)

        fetch_more()
        self._prefetch(requests, pinned)  # queued behind this layer's demand copies
        group = present
        if self.execution.compute_order == "router":  # no overlap inside the layer: one group once all are here
            group, fetched = sorted(present + fetched), []
        while True:
            if group:
                self._use_group(layer, group, kinds, batch)
                for e in group:
                    pinned.discard(ExpertKey(layer, e))
                if guard is not None:
                    guard.release(layer, group, self.pool.table)
            fetch_more()
            group, fetched = fetched, []
            if not group:
                break
        if missing:
            raise RuntimeError(f"layer {layer}: no slot for experts {missing} (capacity {self.pool.capacity})")

    def _use_group(self, layer: int, group: list[int], kinds: dict[int, str], batch: LayerBatch) -> None:
        """Wait for the group's copies on the compute stream, compute it, record uses and last use."""
        info = self._step
        assert info is not None
        rec = self.recorder
        stream = self._compute_stream()
        slots = [self.pool.slot_of(ExpertKey(layer, e)) for e in group]
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
            self.cache_policy.on_access(ExpertKey(layer, e))
        self._compute(layer, group, batch)
        last = rec.mark() if stream is not None else None
        for s in slots:
            s.last_use = last


class HostRead:
    """The one device-to-host read of a layer call: every integer tensor the host needs to plan the layer is
    gathered here and read with a single `.tolist()`, so a layer costs one sync however many parts it has."""

    def __init__(self, first: torch.Tensor):
        self._parts: list[torch.Tensor] = []
        self._dtype = first.dtype
        self.add(first)

    def add(self, t: torch.Tensor) -> None:
        self._parts.append(t.reshape(-1).to(self._dtype))  # [n_i]

    def read(self) -> list[list[int]]:
        """The parts' values, flat, in the order added (one sync)."""
        flat = (torch.cat(self._parts) if len(self._parts) > 1 else self._parts[0]).tolist()  # [sum n_i]
        out, pos = [], 0
        for p in self._parts:
            out.append(flat[pos : pos + p.numel()])
            pos += p.numel()
        return out

    @staticmethod
    def rows(flat: list[int], width: int) -> list[list[int]]:
        """A flat [T * width] read back as T rows."""
        return [flat[i : i + width] for i in range(0, len(flat), width)]


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

