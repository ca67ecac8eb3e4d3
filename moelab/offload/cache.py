"""GpuExpertCache: a fixed pool of expert slots on the compute device, allocated once.

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
    prefetched: bool = False  # filled by a prefetch ...
    used: bool = False  # ... and read since


class GpuExpertCache:
    def __init__(self, layout: ExpertLayout, capacity: int, device: torch.device):
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.layout = layout
        self.capacity = capacity
        self.device = device
        self.pools = {t.name: torch.empty((capacity, *t.shape), dtype=t.dtype, device=device) for t in layout.tensors}
        self.slots = [Slot(i) for i in range(capacity)]
        self.table: dict[ExpertKey, int] = {}
        self._by_layer: dict[int, set[int]] = {}
        self._maps: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return self.capacity * self.layout.nbytes

    def clear(self) -> None:
        self.slots = [Slot(i) for i in range(self.capacity)]
        self.table.clear()
        self._by_layer.clear()
        self._maps.clear()

    def layer_count(self, layer: int) -> int:
        """How many experts of `layer` hold a slot."""
        return len(self._by_layer.get(layer, ()))

    def layer_slots(self, layer: int) -> list[Slot]:
        return [self.slots[i] for i in sorted(self._by_layer.get(layer, ()))]

    def layer_span(self, layer: int) -> int:
        """Slots from the first to the last one `layer` occupies (what a grouped call over them covers)."""
        held = self._by_layer.get(layer)
        return max(held) - min(held) + 1 if held else 0

    def slot_map(self, layer: int, base: int = 0) -> torch.Tensor:
        """Device tensor expert -> slot index - `base` for `layer` (-1 where absent), cached until changes."""
        m = self._maps.get((layer, base))
        if m is None:
            num = 1 + max((self.slots[i].key.expert for i in self._by_layer.get(layer, ())), default=0)
            host = [-1] * num
            for i in self._by_layer.get(layer, ()):
                host[self.slots[i].key.expert] = i - base
            m = self._maps[(layer, base)] = torch.tensor(host, dtype=torch.long, device=self.device)
        return m

    def lookup(self, key: ExpertKey) -> Slot | None:
        i = self.table.get(key)
        return None if i is None else self.slots[i]

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
        self._by_layer.setdefault(key.layer, set()).add(slot.index)
        self._forget_maps(key.layer)

    def unbind(self, slot: Slot) -> ExpertKey:
        key = slot.key
        assert key is not None
        del self.table[key]
        self._by_layer[key.layer].discard(slot.index)
        self._forget_maps(key.layer)
        slot.key, slot.ready, slot.prefetched, slot.used = None, None, False, False
        return key

    def _forget_maps(self, layer: int) -> None:
        for k in [k for k in self._maps if k[0] == layer]:
            del self._maps[k]

    def view(self, done: Any) -> CacheView:
        """Snapshot for policies; `done(mark)` tells whether a copy has finished."""

        def split() -> tuple[frozenset[ExpertKey], frozenset[ExpertKey]]:
            resident, loading = set(), set()
            for key, i in self.table.items():
                ready = self.slots[i].ready
                (resident if ready is None or done(ready) else loading).add(key)
            return frozenset(resident), frozenset(loading)

        return CacheView(self.capacity, self.table, split)
