"""Timestamps for the timeline: CUDA events on a GPU, the host clock on the CPU.

A mark is taken on a stream and read (in ms since an origin mark) once it has completed,
so taking marks never blocks the host.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class WallClock:
    """Host clock, for `device=cpu` where every copy and computation is synchronous."""

    synchronous = True

    def mark(self, stream: Any = None) -> float:
        return time.perf_counter()

    def done(self, mark: float) -> bool:
        return True

    def ms_between(self, origin: float, mark: float) -> float:
        return (mark - origin) * 1e3

    def synchronize(self) -> None:
        pass


class CudaClock:
    """CUDA events with timing, recorded on the given stream."""

    synchronous = False

    def __init__(self, device: torch.device):
        self.device = device

    def mark(self, stream: torch.cuda.Stream | None = None) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(stream if stream is not None else torch.cuda.current_stream(self.device))
        return ev

    def done(self, mark: torch.cuda.Event) -> bool:
        return mark.query()

    def ms_between(self, origin: torch.cuda.Event, mark: torch.cuda.Event) -> float:
        return origin.elapsed_time(mark)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


def clock_for(device: torch.device) -> WallClock | CudaClock:
    return CudaClock(device) if device.type == "cuda" else WallClock()
