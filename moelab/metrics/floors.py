"""Floors: how fast a run could possibly have been, from the machine, and the efficiency measured against that.

Two bounds, each per committed token (all sequences), each either a bound for the row's configuration or NaN
with the reason in `floor_note` (docs/METRICS.md):

- compute: the un-offloaded model's decode step captured as a CUDA graph over a static KV cache
  (`moelab.decoding.steps.GraphStep`), replayed on the run's own prompts and timed with CUDA events, one replay
  per decode step; when the plain model does not fit on the GPU, its first layers are measured at two depths and
  the step extrapolated per layer to the full depth.
- transfer: the bytes any replacement must copy in decode steps for the run's routing at its budget
  (`summary.belady_bytes`) over the copy engine's peak host-to-device bandwidth, measured once per machine
  (`moelab.offload.calibrate.h2d_peak_gbps`), never over the run's own (overlapping) copies.

On a CPU there is no floor at all: host time is all there is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

NAN = float("nan")
CPU_NOTE = "cpu: host time is all there is"
CPU_EXPERTS_NOTE = ("cpu experts: the CPU computed expert uses, so neither the plain model's GPU step nor Belady "
                    "bytes bound the run")
SPEC_EXEC_NOTE = ("speculative execution: which experts run depends on what is resident, so Belady bytes of the "
                  "executed routing bound nothing")
NO_BANDWIDTH_NOTE = "no calibrated H2D bandwidth"
FULL_NOTE = "cuda graph of the plain model"


@dataclass(frozen=True)
class FloorResult:
    """The plain model's decode step on this machine: ms per decode step per sequence (a graph replay at batch B
    over B), its kernel time the same way (NaN where not measured), and how it was measured or why it is NaN."""

    ms_per_token: float
    kernel_ms: float = NAN
    note: str = ""


def _nan(x: float | None) -> bool:
    return x is None or math.isnan(x)


def floor_columns(
    compute: FloorResult | None,
    h2d_gbps: float,
    belady_bytes: float,
    decode_row_steps: float,
    committed: float,
    decode_wall_ms: float,
    cpu_uses: int = 0,
    speculative_execution: bool = False,
) -> dict[str, Any]:
    """The floor columns of a row.

    `decode_row_steps`: Σ rows over decode steps (forward passes per sequence); `committed`: Σ rows x new tokens
    (committed tokens of all sequences). The compute floor is one plain decode step per sequence per decode step
    (a verification pass of gamma+1 tokens does at least a one-token step's work), spread over the tokens those
    steps committed; the transfer floor is `belady_bytes` at `h2d_gbps` over the committed tokens.
    """
    notes: list[str] = []
    compute = compute or FloorResult(NAN, NAN, "plain model not measured")
    if compute.note and compute.note != FULL_NOTE:  # why it is NaN, or how it was scaled
        notes.append(compute.note)
    per_step = decode_row_steps / committed if committed else NAN
    compute_floor = compute.ms_per_token * per_step
    kernel = compute.kernel_ms * per_step
    if _nan(h2d_gbps):
        transfer = NAN
        if CPU_NOTE not in notes:
            notes.append(NO_BANDWIDTH_NOTE)
    elif not committed:
        transfer = NAN
    else:
        transfer = belady_bytes / (h2d_gbps * 1e6) / committed  # GB/s = 1e6 bytes per ms
    if cpu_uses:
        compute_floor = transfer = NAN
        notes.append(CPU_EXPERTS_NOTE)
    if speculative_execution:
        transfer = NAN
        notes.append(SPEC_EXEC_NOTE)
    floor = NAN if _nan(compute_floor) or _nan(transfer) else max(compute_floor, transfer)
    ms_per_committed = decode_wall_ms / committed if committed else NAN
    return {
        "compute_floor_ms_per_token": compute_floor,
        "compute_kernel_ms_per_token": NAN if _nan(compute_floor) else kernel,
        "transfer_floor_ms_per_token": transfer,
        "floor_ms_per_token": floor,
        "floor_note": "; ".join(dict.fromkeys(notes)),
        "h2d_gbps_calibrated": h2d_gbps,
        "efficiency": floor / ms_per_committed if ms_per_committed else NAN,
    }


# --------------------------------------------------------------------------- the compute floor, measured


def compute_floor(om: Any, batches: Sequence[Sequence[Sequence[int]]], new_tokens: int, warmup: int = 3,
                  kernel_replays: int = 5) -> FloorResult:
    """The un-offloaded model's decode step per sequence, as a CUDA graph replayed on the run's prompts.

    NaN on a CPU (host time is all there is). When the plain model's experts do not all fit on the GPU, its first
    n layers that fit are measured, and n // 2, and the step is extrapolated linearly per layer to the full depth.
    """
    if om.device.type != "cuda":
        return FloorResult(NAN, NAN, CPU_NOTE)
    if new_tokens < 2 or not batches:
        return FloorResult(NAN, NAN, "no decode steps")
    key = (id(om.model), om.name, str(om.dtype), json.dumps([list(map(list, b)) for b in batches]), new_tokens)
    if _LAST[0] == key:  # the runs of a sweep over one model and workload measure the plain model once
        return _LAST[1]
    result = _compute_floor(om, batches, new_tokens, warmup, kernel_replays)
    if not math.isnan(result.ms_per_token):
        _LAST[:] = [key, result]
    return result


_LAST: list[Any] = [None, None]  # (key, FloorResult) of the last measurement in this process


def _compute_floor(om: Any, batches: Sequence[Sequence[Sequence[int]]], new_tokens: int, warmup: int,
                   kernel_replays: int) -> FloorResult:
    total = int(om.config.num_hidden_layers)
    fit = layers_that_fit(om)
    try:
        if fit >= total:
            ms, kernel = _measure(om, batches, new_tokens, total, warmup, kernel_replays)
            return FloorResult(ms, kernel, FULL_NOTE)
        low = fit // 2
        if low < 1 or low <= _first_moe_layer(om):
            return FloorResult(NAN, NAN, f"the plain model does not fit on the GPU: {fit} of {total} layers fit, "
                                         "too few to scale per layer")
        hi_ms, hi_k = _measure(om, batches, new_tokens, fit, warmup, kernel_replays)
        lo_ms, lo_k = _measure(om, batches, new_tokens, low, warmup, kernel_replays)
        ms = extrapolate(low, lo_ms, fit, hi_ms, total)
        kernel = extrapolate(low, lo_k, fit, hi_k, total)
        return FloorResult(ms, kernel, f"scaled per layer from {low} and {fit} of {total} layers")
    except torch.cuda.OutOfMemoryError as e:  # the reason goes to the row; the run goes on
        return FloorResult(NAN, NAN, f"plain model's graph step ran out of GPU memory: {str(e)[:120]}")
    except NotCaptured as e:
        return FloorResult(NAN, NAN, f"plain model's decode step could not be captured as a CUDA graph: {e}")
    finally:
        om.reference.release()


@contextmanager
def _released(om: Any) -> Iterator[None]:
    try:
        yield
    finally:
        om.reference.release()


class NotCaptured(Exception):
    """The plain model's decode step stayed eager (the reason is the message)."""


def extrapolate(n0: int, t0: float, n1: int, t1: float, n: int) -> float:
    """t at n layers on the line through (n0, t0) and (n1, t1): the fixed part (embedding, head) once, the rest
    per layer."""
    return t1 + (t1 - t0) / (n1 - n0) * (n - n1)


def layers_that_fit(om: Any) -> int:
    """Decoder layers whose experts fit in the device memory left (1 GiB spare, as the runner's reference)."""
    from moelab.offload.budget import GIB, free_device_bytes

    total = int(om.config.num_hidden_layers)
    store = om.store
    per_layer = store.expert_bytes * store.num_experts
    free = free_device_bytes(om.device) - GIB
    if store.total_bytes <= free:
        return total
    moe = sorted(store.layers)
    fit = int(max(0, free) // max(per_layer, 1))  # MoE layers that fit
    return moe[fit] if fit < len(moe) else total  # decoder layers before the first MoE layer that does not


def _first_moe_layer(om: Any) -> int:
    return min(om.store.layers) if om.store.layers else 0


@contextmanager
def first_layers(om: Any, n: int) -> Iterator[None]:
    """The model cut to its first `n` decoder layers, and put back."""
    model, adapter, config = om.model, om.adapter, om.config
    layers = adapter.decoder_layers(model)
    saved = (layers, config.num_hidden_layers, getattr(config, "layer_types", None))
    if n < len(layers):
        model.model.layers = torch.nn.ModuleList(list(layers)[:n])
        config.num_hidden_layers = n
        if saved[2] is not None:
            config.layer_types = list(saved[2])[:n]
    try:
        yield
    finally:
        model.model.layers = saved[0]
        config.num_hidden_layers = saved[1]
        if saved[2] is not None:
            config.layer_types = saved[2]


def _measure(om: Any, batches: Sequence[Sequence[Sequence[int]]], new_tokens: int, n_layers: int, warmup: int,
             kernel_replays: int, require_graph: bool = True) -> tuple[float, float]:
    """(ms, kernel ms) per decode step per sequence of the plain model cut to `n_layers`, over every batch
    (`require_graph=False` times eager steps: how a CPU test runs it)."""
    from moelab.decoding.steps import GraphStep  # the graph machinery (CUDA only)

    om.reference.release()
    om.reference.materialize([layer for layer in om.store.layers if layer < n_layers])
    dev = om.device
    total_ms = 0.0
    row_steps = 0
    kernel = NAN
    # every row of a static batch has one length: each batch's prompts are cut to its shortest
    inputs = [torch.tensor([list(p[:min(map(len, b))]) for p in b], dtype=torch.long, device=dev) for b in batches]
    longest: dict[int, int] = {}
    for ids in inputs:
        longest[ids.shape[0]] = max(longest.get(ids.shape[0], 0), ids.shape[1])
    graphs: dict[int, Any] = {}  # one static cache and graph per batch size, reset between batches
    with first_layers(om, n_layers), om.using(om.reference), torch.no_grad(), _released(om):
        for b, ids in enumerate(inputs):
            rows = ids.shape[0]
            if rows not in graphs:
                length = longest[rows] + max(new_tokens, warmup, kernel_replays) + 1
                graphs[rows] = GraphStep(om, batch_size=rows, max_len=length)
                _decode_steps(graphs[rows], ids, warmup)  # an eager step, the capture and replays, untimed
                if require_graph and not graphs[rows].captured:  # an eager step's time is host-bound: no floor
                    raise NotCaptured(getattr(graphs[rows], "failure", "") or "not captured")
            step = graphs[rows]
            times = _decode_steps(step, ids, new_tokens - 1, timed=True)
            total_ms += sum(times)
            row_steps += rows * len(times)
            if b == 0 and kernel_replays and dev.type == "cuda":
                kernel = _kernel_ms(step, ids, kernel_replays) / rows
    return (total_ms / row_steps if row_steps else NAN), kernel


def _decode_steps(step: Any, ids: torch.Tensor, n: int, timed: bool = False) -> list[float]:
    """Prefill `ids`, then `n` greedy decode replays; with `timed`, each replay's ms (CUDA events on a GPU)."""
    from moelab.offload.clock import clock_for

    clock = clock_for(ids.device)
    step.reset()
    nxt = step.prefill(ids).argmax(-1, keepdim=True)
    marks = []
    for _ in range(n):
        a = clock.mark() if timed else None
        logits = step.decode(nxt)
        if timed:
            marks.append((a, clock.mark()))
        nxt = logits.argmax(-1, keepdim=True)
    if marks:
        clock.synchronize()
    return [clock.ms_between(a, b) for a, b in marks]


def _kernel_ms(step: Any, ids: torch.Tensor, replays: int) -> float:
    """GPU kernel time of one decode replay (the profiler's device time, summed over kernels); NaN if the
    profiler cannot say."""
    try:
        from torch.profiler import ProfilerActivity, profile

        step.reset()
        nxt = step.prefill(ids).argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(replays):  # the same token each time: the kernels do not depend on which
                step.decode(nxt)
            torch.cuda.synchronize()
        us = sum(e.self_device_time_total for e in prof.key_averages()
                 if e.self_device_time_total > 0 and "memcpy" not in e.key.lower())
        return us / 1e3 / replays if us else NAN
    except Exception:  # the kernel time is reported where cheap; never a reason to fail the run
        return NAN
