"""Percentile bootstrap over utterances, for metrics that are means over utterances.

Numpy only: the resampling works on per-utterance values already computed (``(N, ...)``
arrays), never on the hidden states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def percentiles(boot: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The alpha/2 and 1-alpha/2 quantiles over axis 0 of replicate values ``boot``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return lo, hi


def bootstrap_means(
    per_utterance_values: Any, n_boot: int = 1000, seed: int = 0, chunk: int = 64
) -> np.ndarray:
    """(n_boot, ...) bootstrap means over axis 0 (utterances), vectorised via count weights."""
    v = np.asarray(per_utterance_values, dtype=np.float64)
    n = v.shape[0]
    flat = v.reshape(n, -1)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, flat.shape[1]))
    for s in range(0, n_boot, chunk):
        m = min(chunk, n_boot - s)
        idx = rng.integers(0, n, size=(m, n))
        counts = np.bincount((np.arange(m)[:, None] * n + idx).ravel(), minlength=m * n)
        out[s : s + m] = counts.reshape(m, n).astype(np.float64) @ flat / n
    return out.reshape((n_boot,) + v.shape[1:])


def bootstrap_ci(
    per_utterance_values: Any, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI over utterances for a metric that is a mean over utterances.

    ``per_utterance_values`` has shape (N, ...) (e.g. (N, L, L)); returns (lo, hi), each of
    shape ``...``: the alpha/2 and 1-alpha/2 quantiles of the means of ``n_boot`` resamples
    of the N rows with replacement (seeded, deterministic).
    """
    boot = bootstrap_means(per_utterance_values, n_boot, seed)
    return percentiles(boot, alpha)


def mean_and_ci(
    per: np.ndarray, params: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean over utterances, ci_lo, ci_hi) of per-utterance values ``per`` (N, ...), the CI by
    :func:`bootstrap_ci` with ``params``' ``n_boot``, ``alpha`` and ``seed``; NaN when
    ``n_boot`` is 0."""
    if params["n_boot"] <= 0:
        nan = np.full(per.shape[1:], np.nan)
        return per.mean(0), nan, nan.copy()
    lo, hi = bootstrap_ci(per, params["n_boot"], params["alpha"], params["seed"])
    return per.mean(0), lo, hi
