"""TransferEngine: host-to-device copies of experts on dedicated copy streams (prefetch, demand).

Demand fetches are issued at once; prefetch requests wait in a priority queue that the
policy may rewrite until they are issued. Issued copies cannot be recalled; their end
events say when a slot is ready. On the CPU (no streams) copies are synchronous.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from moelab.core.types import ExpertKey, PrefetchRequest
from moelab.offload.slots import Slot, SlotPool
from moelab.offload.store import ExpertStore
from moelab.offload.timeline import TimelineRecorder


class TransferEngine:
    def __init__(self, store: ExpertStore, pool: SlotPool, recorder: TimelineRecorder, device: torch.device):
        self.store = store
        self.pool = pool
        self.recorder = recorder
        self.device = device
        # Prefetches and demand fetches go on separate copy streams: an issued prefetch cannot be recalled, and
        # a demand fetch queued behind it on one stream would wait for all of it (it shares the link instead).
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.demand_stream = torch.cuda.Stream(device, priority=-1) if device.type == "cuda" else None
        self.queue: list[PrefetchRequest] = []
        self.bytes = {"demand": 0, "prefetch": 0}
        self.count = {"demand": 0, "prefetch": 0}

    def reset(self, recorder: TimelineRecorder) -> None:
        self.recorder = recorder
        self.queue = []
        self.bytes = {"demand": 0, "prefetch": 0}
        self.count = {"demand": 0, "prefetch": 0}

    def copy_in(self, key: ExpertKey, slot: Slot, cause: str, step: int) -> Any:
        """Copy `key` from the store into `slot`; returns the mark that completes with the copy."""
        src = self.store.expert(key.layer, key.expert)
        dst = self.pool.tensors(slot)
        rec = self.recorder
        if self.copy_stream is None:
            start = rec.mark()
            for name, t in dst.items():
                t.copy_(src[name])
            end = rec.mark()
            # A synchronous copy stops compute: a demand copy is a stall, a prefetch one host time.
            (rec.stall if cause == "demand" else rec.gap)(start, end)
        else:
            stream = self.demand_stream if cause == "demand" else self.copy_stream
            assert stream is not None  # created for CUDA devices
            with torch.cuda.stream(stream):
                if slot.last_use is not None:
                    stream.wait_event(slot.last_use)  # never overwrite weights compute still reads
                if slot.copy_end is not None:
                    stream.wait_event(slot.copy_end)  # nor a copy still landing from the other stream
                start = rec.mark(stream)
                for name, t in dst.items():
                    t.copy_(src[name], non_blocking=True)
                end = rec.mark(stream)
        slot.copy_end = None if self.copy_stream is None else end
        nbytes = self.store.expert_bytes
        rec.copy(key, nbytes, cause, step, start, end)
        self.bytes[cause] += nbytes
        self.count[cause] += 1
        return None if self.copy_stream is None else end

    def submit(self, requests: Iterable[PrefetchRequest]) -> None:
        """Replace the not-yet-issued queue: the latest prediction wins."""
        best: dict[ExpertKey, PrefetchRequest] = {}
        for r in requests:
            if r.fetch and (r.key not in best or r.priority > best[r.key].priority):
                best[r.key] = r
        self.queue = sorted(best.values(), key=lambda r: -r.priority)

    def drop(self, key: ExpertKey) -> None:
        self.queue = [r for r in self.queue if r.key != key]

    def pump(
        self, allocate: Callable[[ExpertKey, float], Slot | None], step: int, max_issue: int | None = None
    ) -> int:
        """Issue queued prefetches while `allocate` finds them a slot; returns how many were issued."""
        issued = 0
        remaining = []
        for i, req in enumerate(self.queue):
            if max_issue is not None and issued >= max_issue:
                remaining.extend(self.queue[i:])
                break
            if self.pool.lookup(req.key) is not None:
                continue
            slot = allocate(req.key, req.priority)
            if slot is None:
                remaining.extend(self.queue[i:])
                break
            ready = self.copy_in(req.key, slot, "prefetch", step)
            self.pool.bind(slot, req.key, ready, prefetched=True)
            issued += 1
        self.queue = remaining
        return issued
