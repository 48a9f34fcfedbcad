"""The paper's similarity protocol: a metric computed on consecutive batches of ``b``
utterances and averaged over the batches (Dorszewski et al.: 20 batches of 128 validation
utterances), with a t interval over the batch values as its CI.

Biased CKA and mutual k-NN depend on the number of utterances they see, so the batch mean
estimates ``E[metric_b]`` (the metric at b utterances), not the all-at-once value at N.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from workflow_scripts.similarity import intervals, registry
from workflow_scripts.similarity.compute import compute_metric
from workflow_scripts.similarity.stack import Stack


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """The ``n // batch_size`` consecutive full batches of ``range(n)``; the remainder
    (``n % batch_size`` utterances at the end) is left out."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return [slice(s, s + batch_size) for s in range(0, n - batch_size + 1, batch_size)]


def _average(values: list, alpha: float, ci: bool) -> tuple[Any, Any, Any]:
    """(mean, lo, hi) over the batch values (arrays, or dicts k -> array): the mean over
    batches with its t interval (:func:`~workflow_scripts.similarity.intervals.t_interval`),
    lo and hi NaN without ``ci``."""
    if isinstance(values[0], dict):
        parts = {k: _average([v[k] for v in values], alpha, ci) for k in values[0]}
        return tuple({k: part[i] for k, part in parts.items()} for i in range(3))
    mean, lo, hi = intervals.t_interval(np.stack(values), alpha)
    if not ci:
        lo, hi = np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    return mean, lo, hi


def batched_metric(
    name: str,
    H: Any,
    params: Mapping[str, Any] | None,
    batch_size: int,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Metric ``name`` on each batch of ``batch_size`` consecutive utterances of the stack
    ``H`` (:func:`batch_slices`: a remainder is left out, and logged), averaged over batches.

    Returns :func:`~workflow_scripts.similarity.compute.compute_metric`'s dict, whose value
    is the mean of the batch values (each computed as ``compute_metric`` on the batch, without
    CI), plus ``batch_size`` and ``n_batches``; ``n_utterances`` counts the utterances used.
    CI: ``mean -/+ t_{B-1} s / sqrt(B)`` over the B batch values (``s`` their standard
    deviation), an interval for ``E[metric_b]`` since disjoint batches are independent;
    ``n_boot`` only switches it on (> 0) or off, and one batch gives none. The k of a k-NN
    metric must be < ``batch_size`` (checked by the plan's config check too).
    """
    p = registry.resolve_params(name, params)
    n = Stack(H).N
    slices = batch_slices(n, int(batch_size))
    if not slices:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} utterances")
    dropped = n - len(slices) * batch_size
    if dropped and log:
        log(f"{dropped} utterance(s) after the last full batch of {batch_size} left out")
    runs = [compute_metric(name, H[:, s], {**p, "n_boot": 0}) for s in slices]
    res = {**runs[0], "params": p, "n_utterances": len(slices) * batch_size}
    key = registry.get(name).value_key
    ci = p["n_boot"] > 0 and len(slices) > 1
    res[key], res["ci_lo"], res["ci_hi"] = _average([r[key] for r in runs], p["alpha"], ci)
    res["ci_scheme"] = intervals.batches_label(len(slices), batch_size) if ci else registry.NO_CI
    res.update(batch_size=int(batch_size), n_batches=len(slices))
    return res
