"""MoE-SpAc's released engine (github.com/lshAlgorithm/MoE-SpAc, ggml/src/ggml-backend.cpp), as a deterministic
model that `prefetch=spac_released` and `cache=spac_released` share.

The released code runs two threads beside llama.cpp's scheduler; its rules, which this model keeps:
- Utility: an integer level 0..`levels` per (layer, expert), updated from each pass's tokens per expert c: +1
  when c >= level + `up` (5), -1 when c <= level - `down` (1); the constants do not scale with the pass's size.
- After a layer ran, every expert of it whose level is > 0 is pushed, at its level, into a multi-level queue
  (FIFO within a level); the prefetch thread pops the highest level first and only levels >= `threshold` (1).
- A popped expert that is resident gets its slot's level raised to max(level, slot level); one that is not
  resident takes a free slot, else the resident slot of lowest level (ties: lowest (layer, expert)) but only if
  that level is < `threshold`; otherwise the thread holds the expert and waits until a slot falls below it.
- When a layer starts, queued entries of that layer at the front of each level are dropped, and its resident
  experts are frozen (level `levels` + 1: never evicted); they alone run on the GPU, every other expert of the
  layer on the CPU (`balancer=residency`). After the layer ran, its frozen experts drop to level 0.

The released threads race with the compute; this model fixes one order, the one moelab's executor can honour
(its hooks run when a layer's router has chosen, before the layer's experts run): at layer l's routing, layer l
is frozen first, then layer l-1's post-compute work runs (unfreeze to level 0, queue drained, levels updated,
pushed, queue drained again), with copies taking no time in the model. The last layer's post-compute work runs
at the step's end. So a prefetch decided after layer l-1 is issued at layer l's routing (after layer l's
attention), a layer earlier than the real threads could at best, and never evicts an expert of the layer about
to run. The executor performs the copies the model decides, in the order decided, on the victims decided.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping

from moelab.core.errors import ConfigError
from moelab.core.types import ExpertKey, ModelSpec
from moelab.policies.utility import UtilityEstimator


class ReleasedSpacEngine:
    """Levels, slot levels, the multi-level queue and the prefetch thread's decisions (the copies, each with the
    slot it frees); the prefetch policy feeds it routing events, the cache policy performs its victims."""

    def __init__(self, levels: int = 5, up: int = 5, down: int = 1, threshold: int = 1):
        if isinstance(threshold, bool) or not 1 <= int(threshold) <= int(levels):
            raise ConfigError(f"threshold must be an integer level in 1..{levels}, got {threshold!r}")
        self.levels, self.threshold = int(levels), int(threshold)
        self.frozen_level = self.levels + 1
        self.estimator = UtilityEstimator("counter", levels=levels, down=down, up=up)
        self.capacity = 0
        self._clear()

    def reset(self, spec: ModelSpec, capacity: int) -> None:
        self.spec, self.capacity = spec, int(capacity)
        self.estimator.reset()
        self._clear()

    def _clear(self) -> None:
        self.slot_level: dict[ExpertKey, int] = {}  # resident expert -> its slot's level as the thread sees it
        self.queue: list[deque[ExpertKey]] = [deque() for _ in range(self.levels + 1)]  # index = level
        self.held: tuple[ExpertKey, int] | None = None  # popped, waiting for a slot below the threshold
        self.pending: tuple[int, Mapping[int, int]] | None = None  # layer that ran, its tokens per expert
        self.issued: deque[tuple[ExpertKey, ExpertKey | None]] = deque()  # (fetch, victim) not yet performed

    # ------------------------------------------------------------------ the model's events
    def sync(self, resident: Collection[ExpertKey]) -> None:
        """Align the model's residency with the cache's (copies it decided that did not happen, other paths)."""
        self.issued.clear()
        for key in [k for k in self.slot_level if k not in resident]:
            del self.slot_level[key]
        for key in resident:
            self.slot_level.setdefault(key, 0)

    def layer_start(self, layer: int, counts: Mapping[int, int]) -> None:
        """Layer `layer` has routed: drop its queued front entries, freeze its residents, then finish the
        layer that ran before it."""
        for q in self.queue:
            while q and q[0].layer == layer:
                q.popleft()
        for key in self.slot_level:
            if key.layer == layer:
                self.slot_level[key] = self.frozen_level
        self.finish_pending()
        self.pending = (layer, dict(counts))

    def finish_pending(self) -> None:
        """The post-compute work of the layer that ran last: unfreeze, update the levels, push, drain."""
        if self.pending is None:
            return
        layer, counts = self.pending
        self.pending = None
        for key, level in self.slot_level.items():
            if key.layer == layer and level == self.frozen_level:
                self.slot_level[key] = 0
        self.drain()
        self.estimator.update(layer, counts, sum(counts.values()))
        levels = self.estimator.by_layer.get(layer, {})
        for e in range(self.spec.num_experts):
            level = int(levels.get(e, 0))
            if level > 0:
                self.queue[level].append(ExpertKey(layer, e))
        self.drain()

    def _pop(self) -> tuple[ExpertKey, int] | None:
        for level in range(self.levels, self.threshold - 1, -1):
            if self.queue[level]:
                return self.queue[level].popleft(), level
        return None

    def drain(self) -> None:
        """Run the prefetch thread until the queue is empty or it waits for a slot."""
        while True:
            entry = self.held or self._pop()
            if entry is None:
                return
            key, level = entry
            if self.held is None and key in self.slot_level:
                self.slot_level[key] = max(level, self.slot_level[key])
                continue
            victim = None
            if len(self.slot_level) >= self.capacity:
                victim = min(self.slot_level, key=lambda k: (self.slot_level[k], k.layer, k.expert))
                if self.slot_level[victim] >= self.threshold:
                    self.held = entry
                    return
                del self.slot_level[victim]
            self.held = None
            self.slot_level[key] = level
            self.issued.append((key, victim))

    # ------------------------------------------------------------------ what the executor does
    def take_issued(self) -> list[tuple[ExpertKey, ExpertKey | None]]:
        """The copies decided since the last call, in order; they stay queued until `inserted` confirms them."""
        return list(self.issued)

    def next_victim(self) -> ExpertKey | None:
        return self.issued[0][1] if self.issued else None

    def inserted(self, key: ExpertKey) -> None:
        if self.issued and self.issued[0][0] == key:
            self.issued.popleft()
        else:  # a copy the model did not decide (a demand fetch under another balancer): level 0
            self.slot_level.setdefault(key, 0)

    def evicted(self, key: ExpertKey) -> None:
        self.slot_level.pop(key, None)
