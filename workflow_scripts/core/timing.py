"""Latency measurement shared by pruning, mimicker and structured-pruning cells.

Median of repeated timed calls after warm-up calls that are not timed. On CUDA the timing uses
CUDA events with synchronisation; on CPU ``time.perf_counter``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def measure_latency(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns {"median_ms", "min_ms", "max_ms", "times_ms" (list), "warmup", "repeats",
    "device"}. ``fn`` should do one whole batch of work (e.g. a forward pass).
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(float(start.elapsed_time(end)))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000.0)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "times_ms": times,
        "warmup": warmup,
        "repeats": repeats,
        "device": str(device),
    }
