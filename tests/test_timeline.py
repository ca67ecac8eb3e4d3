"""Interval arithmetic behind copy/compute overlap and stall, checked against hand-computed cases."""

from moelab.offload.timeline import CopyEvent, StepWindow, Timeline, intersect_total, merge, subtract, total


def test_merge_and_total():
    assert merge([(3, 4), (0, 1), (0.5, 2), (5, 5)]) == [(0, 2), (3, 4)]
    assert total([(0, 2), (1, 3), (10, 11)]) == 4


def test_subtract():
    assert subtract([(0, 10)], [(2, 3), (5, 7)]) == [(0, 2), (3, 5), (7, 10)]
    assert subtract([(0, 10)], [(-1, 11)]) == []
    assert subtract([(0, 4), (6, 8)], [(3, 7)]) == [(0, 3), (7, 8)]


def test_intersection():
    assert intersect_total([(0, 4), (6, 10)], [(3, 7)]) == 2
    assert intersect_total([(0, 1)], [(2, 3)]) == 0


def test_step_summary_overlap_and_stall():
    # step 0 computes from 0 to 10 ms; it stalls 4..6 waiting for a demand copy that ran 3..6,
    # and a prefetch copy runs 7..12, past the end of compute (hidden for 3 of its 5 ms).
    tl = Timeline(
        copies=[CopyEvent("a", 100, "demand", 0, 3.0, 6.0), CopyEvent("b", 100, "prefetch", 0, 7.0, 12.0)],
        stalls=[(4.0, 6.0)],
        gaps=[(1.0, 1.5)],
        steps=[StepWindow(0, "decode", 0.0, 10.0)],
    )
    (s,) = tl.step_summaries()
    assert s["copy_ms"] == 8.0
    assert s["stall_ms"] == 2.0
    assert s["host_gap_ms"] == 0.5
    assert s["compute_ms"] == 10.0 - 2.0 - 0.5
    # demand copy: 3..4 overlaps compute (4..6 is the stall); prefetch: 7..10 overlaps
    assert s["overlap_ms"] == 1.0 + 3.0
    assert s["demand_copy_ms"] == 3.0


def test_copies_are_attributed_to_the_window_they_ran_in():
    tl = Timeline(
        copies=[CopyEvent("a", 1, "prefetch", 0, 8.0, 14.0)],
        steps=[StepWindow(0, "decode", 0.0, 9.0), StepWindow(1, "decode", 10.0, 20.0)],
    )
    s0, s1 = tl.step_summaries()
    assert s0["copy_ms"] == 2.0 and s0["overlap_ms"] == 1.0  # 8..10 in window 0, compute until 9
    assert s1["copy_ms"] == 4.0 and s1["overlap_ms"] == 4.0
