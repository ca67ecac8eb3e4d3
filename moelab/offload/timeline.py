"""Copy/compute timeline of a run, from marks taken on the compute and copy streams.

Everything is placed on one time axis (ms since the run's origin mark), so a prefetch that
runs across a step boundary is still matched against the compute it overlapped.
Compute is busy inside a step's window except while it waits on a copy (stall) or on the
host (gap: the per-layer sync that reads the router's choice, synchronous CPU copies).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Interval = tuple[float, float]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Union of intervals as a sorted list of disjoint intervals."""
    out: list[Interval] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def total(intervals: Iterable[Interval]) -> float:
    return sum(b - a for a, b in merge(intervals))


def subtract(base: Sequence[Interval], holes: Iterable[Interval]) -> list[Interval]:
    """Parts of `base` not covered by `holes`."""
    holes = merge(holes)
    out: list[Interval] = []
    for a, b in merge(base):
        cur = a
        for h0, h1 in holes:
            if h1 <= cur or h0 >= b:
                continue
            if h0 > cur:
                out.append((cur, h0))
            cur = max(cur, h1)
        if cur < b:
            out.append((cur, b))
    return out


def intersect_total(xs: Iterable[Interval], ys: Iterable[Interval]) -> float:
    """Total length of the intersection of two interval sets."""
    xs, ys = merge(xs), merge(ys)
    i = j = 0
    acc = 0.0
    while i < len(xs) and j < len(ys):
        lo = max(xs[i][0], ys[j][0])
        hi = min(xs[i][1], ys[j][1])
        if hi > lo:
            acc += hi - lo
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return acc


def clip(intervals: Iterable[Interval], window: Interval) -> list[Interval]:
    lo, hi = window
    return [(max(a, lo), min(b, hi)) for a, b in intervals if min(b, hi) > max(a, lo)]


@dataclass
class CopyEvent:
    key: Any
    nbytes: int
    cause: str  # "demand" | "prefetch"
    step: int
    start: float
    end: float


@dataclass
class UseEvent:
    """One expert use by GPU compute: how its slot was obtained and, if it had to wait, when."""

    step: int
    key: Any
    kind: str  # "resident" | "inflight" (prefetch not known done) | "demand"
    first_prefetched_use: bool
    wait_start: float | None
    ready: float | None

    @property
    def hit(self) -> bool:
        if self.kind == "resident":
            return True
        if self.kind == "inflight":
            return self.ready is not None and self.wait_start is not None and self.ready <= self.wait_start + 1e-3
        return False


@dataclass
class StepWindow:
    step: int
    phase: str
    start: float
    compute_end: float


@dataclass
class Timeline:
    """Resolved times (ms since origin) of everything that happened on the two streams."""

    copies: list[CopyEvent] = field(default_factory=list)
    stalls: list[Interval] = field(default_factory=list)
    gaps: list[Interval] = field(default_factory=list)
    steps: list[StepWindow] = field(default_factory=list)
    uses: list[UseEvent] = field(default_factory=list)

    def step_summaries(self, run_end: float | None = None) -> list[dict[str, float]]:
        """Per step: copy, overlap, stall and compute time inside its window [start_i, start_{i+1})."""
        copies = sorted((c.start, c.end, c.cause) for c in self.copies)
        holes = _Sorted(merge([*self.stalls, *self.gaps]))
        stalls = _Sorted(merge(self.stalls))
        gaps = _Sorted(merge(self.gaps))
        starts = [c[0] for c in copies]
        max_len = max((b - a for a, b, _ in copies), default=0.0)
        if run_end is None:
            run_end = max([*(w.compute_end for w in self.steps), *(c[1] for c in copies)], default=0.0)
        out = []
        for i, s in enumerate(self.steps):
            end = self.steps[i + 1].start if i + 1 < len(self.steps) else max(run_end, s.compute_end)
            window = (s.start, end)
            compute_window = (s.start, min(s.compute_end, end))
            lo = bisect.bisect_left(starts, s.start - max_len)
            hi = bisect.bisect_right(starts, end)
            near = copies[lo:hi]
            busy = subtract([compute_window], holes.near(compute_window))
            copy_iv = clip([(a, b) for a, b, _ in near], window)
            demand_iv = clip([(a, b) for a, b, cause in near if cause == "demand"], window)
            out.append(
                {
                    "gpu_step_ms": compute_window[1] - compute_window[0],
                    "compute_ms": total(busy),
                    "copy_ms": total(copy_iv),
                    "demand_copy_ms": total(demand_iv),
                    "overlap_ms": intersect_total(copy_iv, busy),
                    "stall_ms": total(clip(stalls.near(compute_window), compute_window)),
                    "host_gap_ms": total(clip(gaps.near(compute_window), compute_window)),
                }
            )
        return out


class _Sorted:
    """Disjoint sorted intervals with a binary search for the ones touching a window."""

    def __init__(self, merged: list[Interval]):
        self.items = merged
        self.ends = [b for _, b in merged]

    def near(self, window: Interval) -> list[Interval]:
        out = []
        for iv in self.items[bisect.bisect_left(self.ends, window[0]) :]:
            if iv[0] >= window[1]:
                break
            out.append(iv)
        return out


class TimelineRecorder:
    """Collects marks as they are taken and resolves them once the device has passed them."""

    def __init__(self, clock: Any, compute_stream: Any = None):
        self.clock = clock
        self.compute_stream = compute_stream
        self.origin = clock.mark(compute_stream)
        self.timeline = Timeline()
        self._pending: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = []  # kind, data, marks

    def _t(self, mark: Any) -> float:
        return self.clock.ms_between(self.origin, mark)

    def mark(self, stream: Any = None) -> Any:
        return self.clock.mark(stream if stream is not None else self.compute_stream)

    def copy(self, key: Any, nbytes: int, cause: str, step: int, start: Any, end: Any) -> None:
        self._pending.append(("copy", (key, nbytes, cause, step), (start, end)))

    def stall(self, start: Any, end: Any) -> None:
        self._pending.append(("stall", (), (start, end)))

    def gap(self, start: Any, end: Any) -> None:
        self._pending.append(("gap", (), (start, end)))

    def use(self, step: int, key: Any, kind: str, first_prefetched_use: bool, wait_start: Any, ready: Any) -> None:
        marks = () if wait_start is None else (wait_start, ready)
        self._pending.append(("use", (step, key, kind, first_prefetched_use), marks))

    def step(self, step: int, phase: str, start: Any, compute_end: Any) -> None:
        self._pending.append(("step", (step, phase), (start, compute_end)))

    def resolve(self, final: bool = False) -> Timeline:
        """Convert completed marks to times; with `final`, wait for the device first."""
        if final:
            self.clock.synchronize()
        keep = []
        tl = self.timeline
        for kind, data, marks in self._pending:
            if not all(self.clock.done(m) for m in marks):
                keep.append((kind, data, marks))
                continue
            start, end = (self._t(m) for m in marks) if marks else (None, None)
            if kind == "use":
                tl.uses.append(UseEvent(*data, start, end))  # type: ignore[call-arg]  # data: the fields before the times
            elif kind == "copy":
                tl.copies.append(CopyEvent(*data, start, end))  # type: ignore[call-arg]
            elif kind in ("stall", "gap"):
                assert start is not None and end is not None  # intervals always have both marks
                (tl.stalls if kind == "stall" else tl.gaps).append((start, end))
            else:
                tl.steps.append(StepWindow(*data, start, end))  # type: ignore[call-arg]
        self._pending = keep
        self.timeline.steps.sort(key=lambda w: w.start)
        return self.timeline
