"""SlotPool: a fixed pool of expert slots on the compute device, allocated once.

One pool tensor per expert tensor name ([capacity, ...] in the HF layout), so a slot's
weights are plain views and the pools never fragment the allocator. A slot remembers the
event that marks its copy done (`ready`) and the event after its last computation
(`last_use`): a copy into the slot waits for `last_use`, a computation waits for `ready`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from moelab.core.types import CacheView, ExpertKey
from moelab.offload.layout import ExpertLayout


@dataclass
class Slot:
    index: int
    key: ExpertKey | None = None
    ready: Any = None  # mark of the copy's end; None once known complete (or never copied)
    last_use: Any = None  # mark after the last computation that read the slot
    copy_end: Any = None  # mark of the last copy into the slot (kept across rebinding: copies may race)
    prefetched: bool = False  # filled by a prefetch ...
    used: bool = False  # ... and read since


class SlotPool:
    def __init__(self, layout: ExpertLayout, capacity: int, device: torch.device, spare: int = 0):
        """`spare` rows past the capacity hold no expert (the graph executor's no-op gather target)."""
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.layout = layout
        self.capacity = capacity
        self.device = device
        self.pools = {t.name: torch.empty((capacity + spare, *t.shape), dtype=t.dtype, device=device)
                      for t in layout.tensors}
        self.slots = [Slot(i) for i in range(capacity)]
        self.table: dict[ExpertKey, int] = {}

    @property
    def nbytes(self) -> int:
        return self.capacity * self.layout.nbytes

    def clear(self) -> None:
        self.slots = [Slot(i) for i in range(self.capacity)]
        self.table.clear()

    def lookup(self, key: ExpertKey) -> Slot | None:
        i = self.table.get(key)
        return None if i is None else self.slots[i]

    def slot_of(self, key: ExpertKey) -> Slot:
        """The slot of a key known to be resident."""
        return self.slots[self.table[key]]

    def tensors(self, slot: Slot) -> dict[str, torch.Tensor]:
        return {name: pool[slot.index] for name, pool in self.pools.items()}

    def free_slot(self) -> Slot | None:
        for s in self.slots:
            if s.key is None:
                return s
        return None

    def bind(self, slot: Slot, key: ExpertKey, ready: Any, prefetched: bool) -> None:
        assert slot.key is None, "bind needs an empty slot"
        slot.key, slot.ready, slot.prefetched, slot.used = key, ready, prefetched, False
        self.table[key] = slot.index

    def unbind(self, slot: Slot) -> ExpertKey:
        key = slot.key
        assert key is not None
        del self.table[key]
        slot.key, slot.ready, slot.prefetched, slot.used = None, None, False, False
        return key

    def view(self, done: Any) -> CacheView:
        """Snapshot for policies; `done(mark)` tells whether a copy has finished."""

        def split() -> tuple[frozenset[ExpertKey], frozenset[ExpertKey]]:
            resident: set[ExpertKey] = set()
            loading: set[ExpertKey] = set()
            for key, i in self.table.items():
                ready = self.slots[i].ready
                (resident if ready is None or done(ready) else loading).add(key)
            return frozenset(resident), frozenset(loading)

        return CacheView(self.capacity, self.table, split)
