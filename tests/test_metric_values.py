"""Every metric `run_metrics`, `step_table` and `verify_metrics` compute (docs/METRICS.md), from hand-built timelines
and generations with values computed by hand in the comments: stalls, two copy streams at once, CPU uses,
speculative steps with varying acceptance, batch > 1, the floors and the efficiency. Then proof that these tests
can fail: each metric's formula (or the helper it rests on) replaced by a constant fails at least one check. Then
the floors as bounds (real executor runs on the CPU never copy fewer bytes than `belady_bytes`), and speculative
sampling's rejection rule against a peaked target."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from moelab.decoding.base import Generation, StepTiming
from moelab.decoding.speculative import SpeculativeDecoding
from moelab.metrics import floors, summary
from moelab.metrics.floors import CPU_EXPERTS_NOTE, CPU_NOTE, FULL_NOTE, SPEC_EXEC_NOTE, FloorResult
from moelab.offload import timeline as tl_mod
from moelab.offload.executor import ExecutorCounters
from moelab.offload.timeline import CopyEvent, StepWindow, Timeline, UseEvent

NAN = float("nan")
MUTANT = 7.25  # a constant no hand-computed value below equals


def expect(got: dict, want: dict) -> None:
    for col, value in want.items():
        assert col in got, col
        v = got[col]
        if isinstance(value, str):
            assert v == value, (col, v, value)
        elif math.isnan(value):
            assert isinstance(v, float) and math.isnan(v), (col, v)
        else:
            assert v == pytest.approx(value, rel=1e-9, abs=1e-12), (col, v, value)


def use(step, key, kind="resident", prefetched=False, wait=None, ready=None):
    return UseEvent(step, key, kind, prefetched, wait, ready)


# --------------------------------------------------------------------------------------------- scenario A
# Autoregressive, batch 2: a prefill and two decode steps; in step 1 a demand copy and a prefetch run at once on two
# copy streams while compute stalls for the demand copy; in step 2 a prefetch runs past the end of compute.

def scenario_a() -> tuple[Generation, Timeline, ExecutorCounters, dict[str, int]]:
    gen = Generation([[1, 2, 3], [4, 5, 6]], [
        StepTiming(0, "prefill", 0, 2, 10, 1, 20.0),
        StepTiming(1, "decode", 0, 2, 2, 1, 10.0),
        StepTiming(2, "decode", 0, 2, 2, 1, 14.0),
    ])
    timeline = Timeline(
        copies=[
            CopyEvent((0, 0), 100, "demand", 0, 2.0, 6.0),
            CopyEvent((0, 3), 100, "demand", 1, 21.0, 25.0),  # stream 1
            CopyEvent((1, 4), 100, "prefetch", 1, 22.0, 26.0),  # stream 2, at the same time
            CopyEvent((1, 5), 200, "prefetch", 2, 38.0, 44.0),  # past compute's end (42)
        ],
        stalls=[(23.0, 25.0)],
        gaps=[(20.0, 21.0), (30.0, 31.0), (35.0, 36.0)],
        steps=[StepWindow(0, "prefill", 0.0, 18.0), StepWindow(1, "decode", 20.0, 28.0),
               StepWindow(2, "decode", 30.0, 42.0)],
        uses=[
            use(0, (0, 0), "demand", wait=2.0, ready=6.0), use(0, (0, 1)),
            use(1, (0, 3), "demand", wait=23.0, ready=25.0),
            use(1, (1, 4), "inflight", True, wait=24.0, ready=26.0),  # prefetched, not in time: a miss
            use(1, (0, 0)),
            use(2, (0, 3)), use(2, (1, 5), "inflight", True, wait=33.0, ready=32.0),  # in time: a hit
            use(2, (0, 0)), use(2, (1, 4)),
        ],
    )
    counters = ExecutorCounters(
        wasted_bytes=200, prefetched_unused_evicted=1, prefetched_used=2, cpu_uses=0, evictions=3,
        routing=[(0, 0, (0, 1)), (0, 1, (2,)), (1, 0, (0, 3)), (1, 1, (2, 4)), (2, 0, (0, 3)), (2, 1, (5,))],
    )
    return gen, timeline, counters, {"demand": 2, "prefetch": 3}


STEPS_A = [
    # step 0: window [0, 20), compute [0, 18), the copy 2..6 under compute
    dict(step=0, phase="prefill", rows=2, new_tokens=1, wall_ms=20.0, gpu_step_ms=18.0, compute_ms=18.0, copy_ms=4.0,
         demand_copy_ms=4.0, overlap_ms=4.0, stall_ms=0.0, host_gap_ms=0.0, uses=2, hits=1, prefetched_uses=0,
         h2d_bytes_demand=100, h2d_bytes_prefetch=0, copies_demand=1, copies_prefetch=0),
    # step 1: window [20, 30), compute [20, 28) less the gap 20..21 and the stall 23..25: busy 21..23, 25..28 = 5;
    # copies 21..25 and 22..26 on two streams: busy 21..26 = 5 ms (not 8); overlap with busy: 21..23 + 25..26 = 3
    dict(step=1, phase="decode", gpu_step_ms=8.0, compute_ms=5.0, copy_ms=5.0, demand_copy_ms=4.0, overlap_ms=3.0,
         stall_ms=2.0, host_gap_ms=1.0, uses=3, hits=1, prefetched_uses=1, h2d_bytes_demand=100,
         h2d_bytes_prefetch=100, copies_demand=1, copies_prefetch=1),
    # step 2: window [30, 44) (the run ends with the copy at 44), compute [30, 42) less gaps 30..31, 35..36 = 10;
    # copy 38..44 = 6, under compute 38..42 = 4
    dict(step=2, phase="decode", gpu_step_ms=12.0, compute_ms=10.0, copy_ms=6.0, demand_copy_ms=0.0, overlap_ms=4.0,
         stall_ms=0.0, host_gap_ms=2.0, uses=4, hits=4, prefetched_uses=1, h2d_bytes_demand=0,
         h2d_bytes_prefetch=200, copies_demand=0, copies_prefetch=1),
]

# decode walls 10 + 14 = 24 ms for 1 + 1 tokens per sequence, 2 sequences: 4 tokens
# belady_bytes: decode accesses a=(0,0) b=(0,3) c=(1,2) d=(1,4) a b e=(1,5) at 2 slots: a b c(evict b) d(evict c)
# a(hit) b(miss) e(miss) = 6 misses, less the 2 slots decode may start with = 4 x 100 bytes
# floors: compute 3.0 ms per step per sequence x (2 + 2 row steps) / 4 tokens = 3.0, kernel 2.5; transfer 400 bytes
# at 5e-5 GB/s (50 bytes/ms) = 8 ms over 4 tokens = 2.0; floor 3.0; 24 ms / 4 tokens = 6 ms each: efficiency 0.5
METRICS_A = dict(
    ttft_ms=20.0, tpot_ms=12.0, tpot_median_ms=12.0, tpot_p90_ms=13.6, tokens_per_s=4 / 0.024, decode_tokens=4.0,
    hit_rate=5 / 7, prefetch_precision=2 / 3, prefetch_recall=2 / 7, cpu_share=0.0,
    h2d_bytes_demand=100.0, h2d_bytes_prefetch=300.0, h2d_bytes_wasted=200.0, h2d_bytes_prefill=100.0,
    copy_ms=11.0, overlap=7 / 11, stall_ms=2.0, stall_share=2 / 24, compute_ms=15.0, host_gap_ms=3.0,
    h2d_gbps_demand=200 / 8 / 1e6,  # both demand copies (prefill's too): 200 bytes in 4 + 4 ms
    h2d_gbps=500 / 18 / 1e6,  # every copy's bytes over their summed durations 4 + 4 + 4 + 6
    belady_bytes=400.0, h2d_gbps_calibrated=5e-5,
    compute_floor_ms_per_token=3.0, compute_kernel_ms_per_token=2.5, transfer_floor_ms_per_token=2.0,
    floor_ms_per_token=3.0, floor_note="", efficiency=0.5, evictions=3.0,
)


# --------------------------------------------------------------------------------------------- scenario B
# Speculative decoding, two prompts: verification passes of gamma=3 committing 4, 1 and 2 tokens, then 3; no copy
# at all (every expert resident).

def scenario_b() -> tuple[Generation, Timeline, ExecutorCounters, dict[str, int]]:
    gen = Generation([[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12]], [
        StepTiming(0, "prefill", 0, 1, 5, 1, 30.0),
        StepTiming(1, "verify", 0, 1, 4, 4, 12.0),
        StepTiming(2, "verify", 0, 1, 4, 1, 9.0),
        StepTiming(3, "verify", 0, 1, 4, 2, 10.0),
        StepTiming(4, "prefill", 1, 1, 6, 1, 26.0),
        StepTiming(5, "verify", 1, 1, 4, 3, 11.0),
    ])
    windows = [(0, 28), (30, 40), (42, 50), (52, 60), (62, 86), (88, 97)]
    uses = [4, 5, 5, 3, 3, 4]
    timeline = Timeline(
        gaps=[(31.0, 32.0), (43.0, 45.0)],
        steps=[StepWindow(i, s.phase, float(a), float(b)) for i, (s, (a, b)) in enumerate(zip(gen.steps, windows))],
        uses=[use(i, (0, j)) for i, n in enumerate(uses) for j in range(n)],
    )
    counters = ExecutorCounters(routing=[
        (0, 0, (0, 1)), (0, 1, (0, 1)),
        (1, 0, (0, 1, 2)), (1, 1, (0, 1)),
        (2, 0, (1,)), (2, 1, (0, 1, 2, 3)),
        (3, 0, (0, 1)), (3, 1, (2,)),
        (4, 0, (0, 1)), (4, 1, (3,)),
        (5, 0, (2, 3)), (5, 1, (1, 2)),
    ])
    return gen, timeline, counters, {}


# decode: walls 12 + 9 + 10 + 11 = 42 ms for 4 + 1 + 2 + 3 = 10 tokens: tpot 4.2 (the mean of the per-step values,
# 3, 9, 5, 3.667, would be 5.17); median of those (3.667 + 5) / 2, p90 5 + 0.7 x (9 - 5)
# compute: step 1 [30, 40) less 31..32 = 9, step 2 [42, 50) less 43..45 = 6, step 3 8, step 5 9 = 32
# belady_bytes at 2 slots, 50 bytes each: batch 0's passes a b c p q | b p q r s | a b r (a..c layer 0 experts 0..2,
# p..s layer 1 experts 0..3) miss 10 times from empty, less 2 = 8; batch 1's pass: 4 distinct, 4 - 2 = 2 -> 500 bytes
# floors: compute 2.0 x 4 passes / 10 tokens = 0.8 (no kernel time); transfer 500 bytes at 100 bytes/ms / 10 = 0.5;
# floor 0.8 over 4.2 ms per token
METRICS_B = dict(
    ttft_ms=28.0, tpot_ms=4.2, tpot_median_ms=(11 / 3 + 5) / 2, tpot_p90_ms=7.8, tokens_per_s=10 / 0.042,
    decode_tokens=10.0, hit_rate=1.0, prefetch_precision=NAN, prefetch_recall=0.0, cpu_share=0.0,
    h2d_bytes_demand=0.0, h2d_bytes_prefetch=0.0, h2d_bytes_wasted=0.0, h2d_bytes_prefill=0.0,
    copy_ms=0.0, overlap=NAN, stall_ms=0.0, stall_share=0.0, compute_ms=32.0, host_gap_ms=3.0,
    h2d_gbps_demand=NAN, h2d_gbps=NAN, belady_bytes=500.0, h2d_gbps_calibrated=1e-4,
    compute_floor_ms_per_token=0.8, compute_kernel_ms_per_token=NAN, transfer_floor_ms_per_token=0.5,
    floor_ms_per_token=0.8, floor_note="", efficiency=0.8 / 4.2, evictions=0.0,
)
# distinct experts per verification pass: layer 0: 3, 1, 2, 2 -> 2.0; layer 1: 2, 4, 1, 2 -> 2.25
VERIFY_B = dict(unique_experts_per_verify=2.125, unique_experts_per_verify_layers=json.dumps({"0": 2.0, "1": 2.25}))


# --------------------------------------------------------------------------------------------- scenario C
# CPU experts (a balancer computed 3 uses on the CPU) under speculative execution, on a machine with floors: the
# floors bound nothing here, and say why.

def scenario_c() -> tuple[Generation, Timeline, ExecutorCounters, dict[str, int]]:
    gen = Generation([[1, 2, 3]], [StepTiming(0, "prefill", 0, 1, 4, 1, 8.0), StepTiming(1, "decode", 0, 1, 1, 1, 5.0),
                                   StepTiming(2, "decode", 0, 1, 1, 1, 7.0)])
    timeline = Timeline(
        copies=[CopyEvent((0, 1), 40, "demand", 1, 9.0, 11.0)],
        stalls=[(9.0, 11.0)],
        steps=[StepWindow(0, "prefill", 0.0, 7.0), StepWindow(1, "decode", 8.0, 12.0),
               StepWindow(2, "decode", 13.0, 19.0)],
        uses=[use(0, (0, 0)), use(0, (0, 2)), use(1, (0, 1), "demand", wait=9.0, ready=11.0), use(1, (0, 0)),
              use(2, (0, 0)), use(2, (0, 1))],
    )
    counters = ExecutorCounters(cpu_uses=3, evictions=1,
                                routing=[(0, 0, (0, 2, 3)), (1, 0, (0, 1, 3)), (2, 0, (0, 1))])
    return gen, timeline, counters, {"demand": 1}


# uses on the device 2 + 2 + 2 = 6 and 3 on the CPU: cpu_share 3 / 9; copy 9..11 entirely a stall: overlap 0
METRICS_C = dict(
    ttft_ms=8.0, tpot_ms=6.0, tpot_median_ms=6.0, tpot_p90_ms=6.8, tokens_per_s=2 / 0.012, decode_tokens=2.0,
    hit_rate=3 / 4, prefetch_precision=NAN, prefetch_recall=0.0, cpu_share=1 / 3, h2d_bytes_demand=40.0,
    h2d_bytes_prefetch=0.0, h2d_bytes_wasted=0.0, h2d_bytes_prefill=0.0, copy_ms=2.0, overlap=0.0, stall_ms=2.0,
    stall_share=2 / 12, compute_ms=2.0 + 6.0, host_gap_ms=0.0, h2d_gbps_demand=20 / 1e6, h2d_gbps=20 / 1e6,
    # decode accesses A=(0,0) B=(0,1) C=(0,3) A B at 2 slots: A B C(evict B, next used later than A) A(hit) B(miss)
    # = 4 misses, less 2 = 2 x 40 bytes
    belady_bytes=80.0, h2d_gbps_calibrated=1e-3, compute_floor_ms_per_token=NAN, compute_kernel_ms_per_token=NAN,
    transfer_floor_ms_per_token=NAN, floor_ms_per_token=NAN, floor_note=f"{CPU_EXPERTS_NOTE}; {SPEC_EXEC_NOTE}",
    efficiency=NAN, evictions=1.0,
)

SCENARIOS = {
    "a": (scenario_a, 2, 100, FloorResult(3.0, 2.5, FULL_NOTE), 5e-5, False, METRICS_A),
    "b": (scenario_b, 2, 50, FloorResult(2.0, NAN, FULL_NOTE), 1e-4, False, METRICS_B),
    "c": (scenario_c, 2, 40, FloorResult(1.0, NAN, FULL_NOTE), 1e-3, True, METRICS_C),
}


def metrics_of(name: str) -> tuple[dict, object]:
    build, capacity, expert_bytes, compute, gbps, spec_exec, _ = SCENARIOS[name]
    gen, timeline, counters, transfers = build()
    steps = summary.step_table(gen, timeline)
    row = summary.run_metrics(gen, steps, timeline, counters, transfers, capacity, expert_bytes, compute, gbps,
                              spec_exec)
    return row, steps


def check_values() -> None:
    """Every hand-computed value of the three scenarios and of the floors alone (raises AssertionError)."""
    for name, (*_, want) in SCENARIOS.items():
        row, steps = metrics_of(name)
        expect(row, want)
        assert set(row) == set(want), f"{name}: columns without a value test: {set(row) ^ set(want)}"
    _, steps = metrics_of("a")
    for want, got in zip(STEPS_A, steps.to_dict("records")):
        expect(got, want)
    gen, _, counters, _ = scenario_b()
    expect(summary.verify_metrics(gen, counters), VERIFY_B)
    check_floor_values()


def check_floor_values() -> None:
    # a CPU: no floor at all, said once
    cpu = floors.floor_columns(FloorResult(NAN, NAN, CPU_NOTE), NAN, 100.0, 4, 4, 8.0)
    expect(cpu, dict(compute_floor_ms_per_token=NAN, transfer_floor_ms_per_token=NAN, floor_ms_per_token=NAN,
                     efficiency=NAN, floor_note=CPU_NOTE, h2d_gbps_calibrated=NAN))
    # scaled per layer: defined, and the note says how; batch 4 (16 row-steps, 16 tokens) and transfer-bound:
    # 4000 bytes at 1e-4 GB/s = 40 ms over 16 tokens = 2.5 > 1.5; 32 ms / 16 tokens = 2 ms each -> 1.25 (above 1:
    # this made-up run beat its floor, which a real one cannot)
    note = "scaled per layer from 6 and 12 of 24 layers"
    scaled = floors.floor_columns(FloorResult(1.5, 1.0, note), 1e-4, 4000.0, 16, 16, 32.0)
    expect(scaled, dict(compute_floor_ms_per_token=1.5, compute_kernel_ms_per_token=1.0,
                        transfer_floor_ms_per_token=2.5, floor_ms_per_token=2.5, efficiency=1.25, floor_note=note))
    # a GPU without a calibrated bandwidth: no transfer floor, so no floor
    nobw = floors.floor_columns(FloorResult(1.0, NAN, FULL_NOTE), NAN, 10.0, 2, 2, 4.0)
    expect(nobw, dict(compute_floor_ms_per_token=1.0, floor_ms_per_token=NAN, efficiency=NAN,
                      floor_note=floors.NO_BANDWIDTH_NOTE))
    assert floors.extrapolate(6, 10.0, 12, 16.0, 24) == 28.0  # 1 ms per layer, 4 ms once
    cpu_om = SimpleNamespace(device=torch.device("cpu"))
    assert floors.compute_floor(cpu_om, [[[1, 2]]], 4).note == CPU_NOTE


def test_metric_values_by_hand():
    check_values()


# --------------------------------------------------------------------------------------------- mutations
RUN_COLUMNS = sorted(METRICS_A)
STEP_COLUMNS = sorted(k for k in STEPS_A[1] if k not in ("step", "phase"))


def _constant_column(fn, col):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        if isinstance(out, dict):
            return {**out, col: "x" if isinstance(out[col], str) else MUTANT}
        return out.assign(**{col: MUTANT})
    return wrapped


@pytest.mark.parametrize("col", RUN_COLUMNS)
def test_a_run_metric_replaced_by_a_constant_fails(monkeypatch, col):
    monkeypatch.setattr(summary, "run_metrics", _constant_column(summary.run_metrics, col))
    with pytest.raises(AssertionError):
        check_values()


@pytest.mark.parametrize("col", STEP_COLUMNS)
def test_a_step_column_replaced_by_a_constant_fails(monkeypatch, col):
    monkeypatch.setattr(summary, "step_table", _constant_column(summary.step_table, col))
    with pytest.raises(AssertionError):
        check_values()


@pytest.mark.parametrize("col", sorted(VERIFY_B))
def test_a_verify_metric_replaced_by_a_constant_fails(monkeypatch, col):
    monkeypatch.setattr(summary, "verify_metrics", _constant_column(summary.verify_metrics, col))
    with pytest.raises(AssertionError):
        check_values()


HELPERS = {  # the helpers the formulas rest on, each made constant
    "intersect_total": (tl_mod, "intersect_total", lambda *a: 0.0),  # overlap
    "total": (tl_mod, "total", lambda *a: 1.0),  # copy, stall, compute, gap times
    "subtract": (tl_mod, "subtract", lambda base, holes: list(base)),  # compute without its stalls
    "merge": (tl_mod, "merge", lambda ivs: sorted(ivs)),  # two copy streams counted twice
    "hit": (UseEvent, "hit", property(lambda self: True)),
    "belady_misses": (summary, "belady_misses", lambda accesses, capacity: Counter()),
    "decode_tokens_per_s": (Generation, "decode_tokens_per_s", lambda self: 1.0),
    "decode_ms_per_token": (Generation, "decode_ms_per_token", lambda self: [1.0]),
    "ttft_ms": (Generation, "ttft_ms", lambda self: [1.0]),
    "_div": (summary, "_div", lambda a, b: 1.0),
    "floor_columns": (summary, "floor_columns", lambda *a, **k: floors.floor_columns(
        FloorResult(1.0, 1.0), 1.0, 1.0, 1.0, 1.0, 1.0)),
    "extrapolate": (floors, "extrapolate", lambda *a: 1.0),
}


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_a_helper_replaced_by_a_constant_fails(monkeypatch, name):
    owner, attr, fake = HELPERS[name]
    monkeypatch.setattr(owner, attr, fake)
    with pytest.raises(AssertionError):
        check_values()


# --------------------------------------------------------------------------------------------- floors are bounds

def test_no_replacement_copies_fewer_bytes_in_decode_than_belady_bytes():
    """Real executor runs on the CPU (two caches, with and without a prefetcher that loads ahead, two budgets): the
    bytes copied in decode steps are never below `belady_bytes`, the transfer floor's bytes."""
    from moelab.decoding.autoregressive import AutoregressiveDecoding
    from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model

    om = offloaded_copy(tiny_hf_model("mixtral", num_hidden_layers=2))
    batches = [[p] for p in random_prompts(2, int(om.config.vocab_size))]
    for prefetch, cache, capacity in (("none", "lru", 3), ("ar_binary", "fifo", 5), ("none", "lfu", 6)):
        ex = make_executor(om, capacity, prefetch=prefetch, cache=cache)
        with om.using(ex):
            gen = AutoregressiveDecoding().generate(om, batches, 6)
        timeline = ex.finish()
        steps = summary.step_table(gen, timeline)
        row = summary.run_metrics(gen, steps, timeline, ex.counters, ex.transfers.count, ex.capacity,
                                  om.spec.expert_bytes)
        copied = row["h2d_bytes_demand"] + row["h2d_bytes_prefetch"]
        assert 0 < row["belady_bytes"] <= copied, (prefetch, cache, capacity, row["belady_bytes"], copied)
        assert row["floor_note"] == "plain model not measured; no calibrated H2D bandwidth"


def test_first_layers_cuts_the_model_and_puts_it_back():
    from tests.conftest import offloaded_copy, tiny_hf_model

    om = offloaded_copy(tiny_hf_model("mixtral", num_hidden_layers=3))
    layers = om.adapter.decoder_layers(om.model)
    with floors.first_layers(om, 1), torch.no_grad():
        assert len(om.adapter.decoder_layers(om.model)) == 1 and om.config.num_hidden_layers == 1
        assert om.model(torch.tensor([[1, 2, 3]])).logits.shape[1] == 3
    assert om.adapter.decoder_layers(om.model) is layers and om.config.num_hidden_layers == 3


def test_the_floor_measurement_runs_the_plain_model_cut_to_its_first_layers():
    """What the compute floor replays as a CUDA graph runs here eagerly over the same static caches: the plain
    model whole and cut to one layer (caches sized by the cut config), batches of 2 and 1 prompts of uneven
    lengths (cut to each batch's shortest); the experts it put on the device are released after."""
    from tests.conftest import offloaded_copy, tiny_hf_model

    om = offloaded_copy(tiny_hf_model("mixtral", num_hidden_layers=3))
    batches = [[[5, 6, 7, 8], [8, 9, 10]], [[11, 12]]]
    for n in (3, 1):
        ms, kernel = floors._measure(om, batches, 4, n, warmup=2, kernel_replays=0, require_graph=False)
        assert ms > 0 and math.isnan(kernel)  # host time here: it exercises the code, it is no floor
        assert om.config.num_hidden_layers == 3 and not om.reference._resident
    with pytest.raises(floors.NotCaptured):  # on a CPU nothing is captured: the floor refuses eager steps
        floors._measure(om, batches, 4, 3, warmup=2, kernel_replays=0)


# --------------------------------------------------------------------------------------------- rejection sampling
V = 8


def _target_logits() -> torch.Tensor:
    """Rows after positions 0, 1, 2: peaked on tokens 2, 5 and 6 (probability 0.8 each)."""
    rows = torch.full((3, V), 0.2 / (V - 1))
    for i, t in enumerate((2, 5, 6)):
        rows[i, t] = 0.8
    return rows.log()


def _draft(kind: str) -> torch.Tensor:
    """The draft's distribution at each of 2 positions: uniform, or peaked one token off the target's mode."""
    if kind == "uniform":
        return torch.full((2, V), 1 / V)
    q = torch.full((2, V), 0.1 / (V - 1))
    q[0, 3], q[1, 6] = 0.9, 0.9
    return q


def first_tokens(accept, draft: str, n: int = 3000, seed: int = 0) -> torch.Tensor:
    """Frequencies of the first committed token over `n` verification passes of 2 draft tokens."""
    logits, q = _target_logits(), _draft(draft)
    rng = torch.Generator().manual_seed(seed)
    counts = torch.zeros(V)
    for _ in range(n):
        proposals = [int(torch.multinomial(q[i], 1, generator=rng)) for i in range(2)]
        accepted, nxt = accept(logits, proposals, [q[0], q[1]], rng)
        counts[(proposals[:accepted] + [nxt])[0]] += 1
    return counts / n


def check_keeps_the_target(accept) -> None:
    """Whatever the draft, the first committed token follows the target's row 0 (0.8 on token 2)."""
    p = torch.softmax(_target_logits()[0], -1)
    for draft in ("uniform", "off_by_one"):
        err = (first_tokens(accept, draft) - p).abs().max().item()
        assert err < 0.04, (draft, err)


def test_rejection_sampling_keeps_a_peaked_target():
    sd = SpeculativeDecoding(gamma=2, acceptance="sampling", temperature=1.0)
    check_keeps_the_target(sd._accept)


def test_the_sampling_check_rejects_a_uniform_and_an_off_by_one_sampler():
    sd = SpeculativeDecoding(gamma=2, acceptance="sampling", temperature=1.0)

    def uniform(logits, proposals, q, rng):  # ignores the target
        return 0, int(torch.randint(V, (1,), generator=rng))

    def off_by_one(logits, proposals, q, rng):  # judges position i by the target's row i + 1
        return sd._accept(torch.cat([logits[1:], logits[-1:]]), proposals, q, rng)

    for wrong in (uniform, off_by_one):
        with pytest.raises(AssertionError):
            check_keeps_the_target(wrong)
