"""CostModel: what moving and running one expert costs on this machine, measured by `python -m moelab.calibrate`.

Balancers and policies read it to compare paths (fetch then compute on the GPU, or compute in place on
the CPU). It is plain numbers: piecewise-linear in the measured points, extended linearly past them.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through sorted (x, y) points, linear extension beyond the ends."""
    if not points:
        raise ValueError("no measured points")
    if len(points) == 1:
        return points[0][1] * (x / points[0][0] if points[0][0] else 1.0)
    xs = [p[0] for p in points]
    i = min(max(bisect.bisect_left(xs, x), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass
class CostModel:
    expert_bytes: int
    h2d_ms: float  # one expert's host-to-device copy
    gpu: list[tuple[int, float]]  # (tokens routed to one expert, ms on the compute device)
    cpu: list[tuple[int, float]]  # (tokens, ms on the CPU worker, from host memory)
    key: dict[str, Any] = field(default_factory=dict)  # machine and model shape it was measured for
    # what a layer call pays once for using the CPU at all: the device-to-host copy of its tokens (a sync with
    # the device), the hand-off to the worker thread and back, and the host-to-device copy of the outputs
    cpu_fixed_ms: float = 0.0

    @property
    def h2d_gbps(self) -> float:
        return self.expert_bytes / self.h2d_ms / 1e6

    def transfer_ms(self, experts: int = 1) -> float:
        """Copies are serial on the one copy stream."""
        return experts * self.h2d_ms

    def gpu_ms(self, tokens: int) -> float:
        return interpolate(self.gpu, tokens)

    def cpu_ms(self, tokens: int) -> float:
        """One expert's compute on the CPU worker (without the per-call `cpu_fixed_ms`)."""
        return interpolate(self.cpu, tokens)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> CostModel:
        d = json.loads(Path(path).read_text())
        return cls(int(d["expert_bytes"]), float(d["h2d_ms"]), [tuple(p) for p in d["gpu"]],
                   [tuple(p) for p in d["cpu"]], d.get("key", {}), float(d.get("cpu_fixed_ms", 0.0)))
