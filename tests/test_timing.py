"""The shared latency helpers (workflow_scripts.core.timing) on a fake clock: only the timed
functions advance it, so the results are exact on a loaded machine (no wall-clock
assertions)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from workflow_scripts.core import timing
from workflow_scripts.core.timing import compare_latency, measure_latency, median_interval


@pytest.fixture
def clock(monkeypatch):
    """A clock (seconds) that only ``advance`` moves, installed as ``timing.time``."""
    c = SimpleNamespace(now=0.0)
    c.perf_counter = c.process_time = lambda: c.now

    def advance(ms):
        c.now += ms / 1000.0

    c.advance = advance
    monkeypatch.setattr(timing, "time", c)
    return c


def test_measure_latency_excludes_warmup_and_reports_median(clock):
    # calls 1-2 (warm-up) take 300 ms; the timed calls 5, 5, 80, 5, 5 ms
    durations = [300, 300, 5, 5, 80, 5, 5]
    calls = []

    def fn():
        clock.advance(durations[len(calls)])
        calls.append(1)

    res = measure_latency(fn, "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and len(res["times_ms"]) == 5
    assert res["times_ms"] == pytest.approx([5, 5, 80, 5, 5])
    assert res["max_ms"] == pytest.approx(80)  # the 300-ms warm-up calls were not timed
    assert res["min_ms"] == pytest.approx(5)
    assert res["median_ms"] == pytest.approx(5)  # the median, not the mean (20 ms) or the max
    assert (res["warmup"], res["repeats"], res["device"]) == (2, 5, "cpu")


def fake_pair(clock, base_ms, method_ms, load=None):
    """(baseline, method, calls): functions that advance the clock by their round's time times
    that round's load (the same for both: what another job on the machine does to a round)."""
    calls = []

    def make(name, times):
        def fn():
            r = sum(1 for c in calls if c == name)
            clock.advance(times[r] * (load[r] if load else 1.0))
            calls.append(name)

        return fn

    return make("A", base_ms), make("B", method_ms), calls


def test_compare_latency_interleaves_after_untimed_warmup(clock):
    """Warm-up rounds run both untimed; timed rounds alternate the order (A B, B A, ...)."""
    base, method, calls = fake_pair(clock, [1000, 1000] + [10] * 4, [1000, 1000] + [5] * 4)
    res = compare_latency(base, method, "cpu", warmup=2, repeats=4)
    assert calls == ["A", "B", "A", "B", "A", "B", "B", "A", "A", "B", "B", "A"]
    assert res["base_times_ms"] == pytest.approx([10] * 4)  # the 1-s warm-up calls untimed
    assert res["times_ms"] == pytest.approx([5] * 4)
    assert (res["warmup"], res["repeats"], res["device"]) == (2, 4, "cpu")


def test_load_shared_by_a_round_cancels_in_the_speedup(clock):
    """A load that slows both calls of a round (x1 .. x3.5 here) moves the medians but not the
    paired ratio: the speed-up is exactly 2 with a degenerate interval."""
    load = [1.0, 3.0, 1.5, 1.0, 2.5, 1.0, 3.5, 1.0, 1.2, 2.0]
    base, method, _ = fake_pair(clock, [20.0] * 10, [10.0] * 10, load)
    res = compare_latency(base, method, "cpu", warmup=0, repeats=10)
    assert res["speedup"] == pytest.approx(2.0)
    assert res["speedup_lo"] == pytest.approx(2.0) and res["speedup_hi"] == pytest.approx(2.0)
    assert res["base_latency_ms"] == pytest.approx(20 * 1.35)  # median load 1.35
    assert res["latency_ms"] == pytest.approx(10 * 1.35)
    assert (res["base_latency_min_ms"], res["latency_min_ms"]) == pytest.approx((20, 10))


def test_speedup_is_the_median_paired_ratio_with_an_order_statistic_interval(clock):
    ratios = [1.8, 2.2, 1.5, 2.0, 2.6, 1.9, 2.1, 1.7, 3.0, 2.05]
    base, method, _ = fake_pair(clock, [10.0 * r for r in ratios], [10.0] * 10)
    res = compare_latency(base, method, "cpu", warmup=0, repeats=10)
    srt = sorted(ratios)
    assert res["speedup"] == pytest.approx((srt[4] + srt[5]) / 2)
    # n = 10: the 2nd and 9th order statistics (coverage 1 - 2 * 11/1024 = 97.9%)
    assert (res["speedup_lo"], res["speedup_hi"]) == pytest.approx((srt[1], srt[8]))


@pytest.mark.parametrize(
    "n, k",  # the interval is (x_(k), x_(n+1-k)); below 6 values (min, max)
    [(1, 1), (5, 1), (6, 1), (8, 1), (9, 2), (10, 2), (20, 6), (100, 40)],
)
def test_median_interval_order_statistics(n, k):
    lo, hi = median_interval(list(range(1, n + 1))[::-1])  # unsorted input
    assert (lo, hi) == (k, n + 1 - k)
    below = sum(math.comb(n, i) for i in range(k)) / 2**n
    assert n < 6 or 1 - 2 * below >= 0.95  # covers at least 95%
    more = below + math.comb(n, k) / 2**n
    assert 1 - 2 * more < 0.95 or k == (n + 1) // 2  # and k is the largest that does
    assert all(math.isnan(v) for v in median_interval([]))


def test_threads_fixed_while_timing_and_restored(clock):
    seen = []

    def fn():
        seen.append(torch.get_num_threads())
        clock.advance(1)

    before = torch.get_num_threads()
    res = compare_latency(fn, fn, "cpu", warmup=1, repeats=2, threads=1)
    assert set(seen) == {1} and res["threads"] == 1
    assert torch.get_num_threads() == before
    res = compare_latency(fn, fn, "cpu", warmup=0, repeats=1)  # None: as the job set them
    assert res["threads"] == before


def test_one_precision_for_both_whatever_the_caller_has_on(clock):
    seen = []

    def fn():
        seen.append(torch.is_autocast_enabled("cpu"))
        clock.advance(1)

    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast does not leak in
        res = compare_latency(fn, fn, "cpu", warmup=1, repeats=2)
    assert res["precision"] == "fp32" == timing.TIMING_PRECISION and not any(seen)
    seen.clear()
    res = compare_latency(fn, fn, "cpu", warmup=0, repeats=2, precision="bf16")
    assert res["precision"] == "bf16" and all(seen) and len(seen) == 4
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        compare_latency(fn, fn, "cpu", precision="fp16")
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        compare_latency(fn, fn, "cpu", repeats=0)


def test_clock_is_cpu_time_on_one_thread_else_wall(monkeypatch):
    """On one CPU thread the calls are timed in process CPU time (which time spent waiting
    for the core does not inflate), on several in wall time."""
    c = SimpleNamespace(wall=0.0, cpu=0.0)
    c.perf_counter, c.process_time = (lambda: c.wall), (lambda: c.cpu)
    monkeypatch.setattr(timing, "time", c)

    def fn():  # 10 ms of work, 40 ms waiting for the core
        c.wall += 0.050
        c.cpu += 0.010

    one = compare_latency(fn, fn, "cpu", warmup=0, repeats=2, threads=1)
    assert one["clock"] == "cpu" and one["latency_ms"] == pytest.approx(10)
    two = compare_latency(fn, fn, "cpu", warmup=0, repeats=2, threads=2)
    assert two["clock"] == "wall" and two["latency_ms"] == pytest.approx(50)
    assert measure_latency(fn, "cpu", 0, 1)["clock"] == "cpu"  # the tests run on one thread
