"""Latency measurement shared by pruning, mimicker and structured-pruning cells.

:func:`compare_latency` (what the cells use) times a method against its baseline in one
process, interleaved: after ``warmup`` untimed rounds, each of ``repeats`` rounds times one
call of each, the order alternating between rounds (A B, B A, A B, ...; so neither always runs
second, in a cache the other warmed). Both run at the same precision (:data:`PRECISIONS`;
fp32 by default, on CPU and CUDA) and on the same torch CPU threads. The speed-up is the
median over rounds of the paired ratio baseline time / method time; its 95% interval is the
distribution-free interval of a median from order statistics (binomial; see
:func:`median_interval`). Load that the machine puts on both alike cancels in the paired
ratios; what remains is noise within a round.

The clock (:func:`_timer`): CUDA events with synchronisation on CUDA; on CPU the process's CPU
time when torch runs on one thread (every cell's job does), which other jobs on the machine
do not inflate, else the wall time (``time.perf_counter``).

:func:`measure_latency` times one function alone (median of ``repeats`` calls after
``warmup``), with the same clocks.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

#: Timing precisions: fp32 (no autocast: what every cell times in), bf16 (autocast).
PRECISIONS = ("fp32", "bf16")
#: The precision every cell's latency columns are measured in (recorded as
#: ``timing_precision``).
TIMING_PRECISION = "fp32"


def precision_context(device: torch.device, precision: str = TIMING_PRECISION):
    """The autocast context of ``precision`` on ``device``: fp32 turns autocast off (so a
    caller's autocast cannot leak into the timing), bf16 turns it on."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {list(PRECISIONS)}")
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _timer(device: torch.device) -> tuple[Callable[[Callable[[], object]], float], str]:
    """(a function that calls ``fn`` once and returns its duration in ms, the clock's name):
    ``"cuda"`` (CUDA events with synchronisation) on CUDA; on CPU ``"cpu"`` - the process's
    CPU time (``time.process_time``) - when torch runs on one thread, else ``"wall"``
    (``time.perf_counter``). On one thread the CPU time a forward pass takes is its latency
    on an idle core, and unlike the wall time it does not grow while other jobs hold the
    core (on the 2-core default machine at a load average of 8, the wall time of one
    forward pass varied 42-78 ms where its CPU time varied 26-30 ms); on several threads
    it would add up the threads' time, so the wall clock is used there."""
    if device.type == "cuda":

        def cuda_call(fn) -> float:
            torch.cuda.synchronize(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return float(start.elapsed_time(end))

        return cuda_call, "cuda"
    single = torch.get_num_threads() == 1
    read = time.process_time if single else time.perf_counter

    def cpu_call(fn) -> float:
        t0 = read()
        fn()
        return (read() - t0) * 1000.0

    return cpu_call, "cpu" if single else "wall"


def measure_latency(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns {"median_ms", "min_ms", "max_ms", "times_ms" (list), "warmup", "repeats",
    "device", "clock" (:func:`_timer`)}. ``fn`` should do one whole batch of work (e.g. a
    forward pass).
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    call, clock = _timer(device)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = [call(fn) for _ in range(repeats)]
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "times_ms": times,
        "warmup": warmup,
        "repeats": repeats,
        "device": str(device),
        "clock": clock,
    }


def median_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median of ``values`` (i.i.d.): the order statistics
    ``(x_(k), x_(n+1-k))`` with the largest k whose coverage ``1 - 2 P(Binomial(n, 1/2) < k)``
    is at least ``level``. Below 6 values no k reaches 95%: the interval is (min, max), whose
    coverage is ``1 - 2^(1-n)`` (94% at 5 values, 88% at 4)."""
    x = sorted(float(v) for v in values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    k, below = 1, 1 / 2**n  # below = P(B <= k - 1)
    while k < (n + 1) // 2:
        below_next = below + math.comb(n, k) / 2**n  # P(B <= k)
        if 1 - 2 * below_next < level:
            break
        k, below = k + 1, below_next
    return x[k - 1], x[n - k]


def compare_latency(
    baseline: Callable[[], object],
    method: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    precision: str = TIMING_PRECISION,
    threads: int | None = None,
) -> dict:
    """Time ``method`` against ``baseline`` interleaved in this process (module docstring):
    ``warmup`` untimed rounds, then ``repeats`` timed rounds of one call each, the order
    alternating between rounds; every call in ``precision`` (:func:`precision_context`) under
    ``torch.inference_mode``, on ``threads`` torch CPU threads (None: as set, e.g. by the rule
    adapter to the job's threads; restored afterwards).

    Returns ``latency_ms`` / ``base_latency_ms`` (medians of the method's / the baseline's
    times), ``latency_min_ms`` / ``base_latency_min_ms``, ``speedup`` (median over rounds of
    baseline time / method time), ``speedup_lo`` / ``speedup_hi`` (:func:`median_interval`,
    95%), ``times_ms`` / ``base_times_ms`` (per round), and the conditions ``warmup``,
    ``repeats``, ``threads``, ``precision``, ``device``, ``clock`` (:func:`_timer`: CPU
    time on one CPU thread, wall time on several, CUDA events on CUDA).
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    base_t, meth_t = [], []
    try:
        used_threads = torch.get_num_threads()
        call, clock = _timer(device)
        with torch.inference_mode(), precision_context(device, precision):
            for _ in range(warmup):
                baseline()
                method()
            for r in range(repeats):
                if r % 2 == 0:
                    base_t.append(call(baseline))
                    meth_t.append(call(method))
                else:
                    meth_t.append(call(method))
                    base_t.append(call(baseline))
    finally:
        torch.set_num_threads(old_threads)
    ratios = [b / m if m > 0 else math.nan for b, m in zip(base_t, meth_t, strict=True)]
    lo, hi = median_interval(ratios)
    return {
        "latency_ms": statistics.median(meth_t),
        "base_latency_ms": statistics.median(base_t),
        "latency_min_ms": min(meth_t),
        "base_latency_min_ms": min(base_t),
        "speedup": statistics.median(ratios),
        "speedup_lo": lo,
        "speedup_hi": hi,
        "times_ms": meth_t,
        "base_times_ms": base_t,
        "warmup": warmup,
        "repeats": repeats,
        "threads": used_threads,
        "precision": precision,
        "device": str(device),
        "clock": clock,
    }
