"""Confidence intervals that are not percentile bootstraps, and the labels of every CI
scheme (the ``ci_scheme`` column of a similarity cell says which one a row's CI is).

* :func:`jackknife_ci`: delete-1 jackknife t interval around an estimate (CKA's default).
* :func:`t_interval`: t interval of a mean of independent values (the per-batch protocol:
  one value per batch of utterances).
* :func:`centred_percentiles`: the half-sampling interval (the spread of half-sample values
  placed around the estimate; the "half" scheme of CKA and of mutual k-NN).

What each interval covers (its target), with the coverage of the nominal 95% measured in
``tests/test_similarity_coverage.py`` (simulated layers, fixed seeds):

* percentile bootstrap of a mean over utterances (cosine, angular distance, block
  influence): the population mean of the per-utterance value (cosine: 95%);
* CKA jackknife: the expected value of the estimator at this number of utterances N,
  ``E[CKA_N]``. For the debiased estimator that is (up to the O(1/N) bias of a ratio) the
  population CKA; the biased estimator's ``E[CKA_N]`` exceeds the population value by a term
  that shrinks like 1/N but grows with the feature dimension (0.71 against 0.34 at 64
  features and N = 40), so its interval is one for "CKA at N utterances", the quantity the
  paper's protocol reports, not for the population CKA (debiased: 94% / 100%, biased: 94.5% /
  99% with few / many features; the jackknife variance errs on the large side, Efron & Stein
  1981). CKA's "bootstrap" scheme covers neither target with many features (0% there: its
  tied pairs inflate CKA); "half" is close to nominal;
* mutual k-NN, half-sampling (the default): ``E[score_N]``, the expected score at N
  utterances; the neighbour sets are recomputed inside every half-sample (96%). The score's
  spread shrinks faster than 1/sqrt(N) when the layers agree little, so the interval is then
  conservative (wider than needed);
* mutual k-NN "conditional" (and the k-NN block influence): the per-utterance overlaps are
  resampled with the neighbour sets of the whole sample fixed. That treats the overlaps as
  independent although neighbouring utterances share neighbours, so as an interval for
  ``E[score_N]`` it is too narrow (83% in the same simulation); it describes the spread over
  utterances given this sample's neighbour sets only;
* batches: ``E[metric_b]``, the expected value of the metric on b utterances (the batches
  are disjoint, hence independent for i.i.d. utterances; exact for normal batch values).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from workflow_scripts.similarity.bootstrap import percentiles
from workflow_scripts.similarity.registry import NO_CI, PERCENTILE

__all__ = ["NO_CI", "PERCENTILE", "KNN_CONDITIONAL", "KNN_HALF", "CKA", "batches_label",
           "t_quantile", "jackknife_ci", "t_interval", "centred_percentiles"]  # fmt: skip

KNN_CONDITIONAL = "percentile bootstrap over utterances, neighbour sets fixed (conditional)"
KNN_HALF = (
    "half-sampling over utterances, neighbour sets recomputed: spread placed around the estimate"
)
#: CKA's ``ci_scheme`` parameter -> its label.
CKA = {
    "jackknife": "delete-1 jackknife over utterances: t interval around the estimate",
    "half": "half-sampling over utterances: spread placed around the estimate",
    "bootstrap": "percentile bootstrap over utterances with ties (inflates CKA; may exclude "
    "the estimate)",
}


def batches_label(n_batches: int, batch_size: int) -> str:
    """The label of the per-batch t interval."""
    return f"t interval over {n_batches} batches of {batch_size} utterances"


def t_quantile(alpha: float, dof: int) -> float:
    """The 1 - alpha/2 quantile of Student's t with ``dof`` degrees of freedom."""
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    return float(stats.t.ppf(1.0 - alpha / 2.0, dof))


def jackknife_ci(point: np.ndarray, loo: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Delete-1 jackknife interval ``point -/+ t_{N-1} se`` from the leave-one-out values
    ``loo`` (N, ...), ``se^2 = (N-1)/N sum_i (loo_i - mean(loo))^2`` (Efron & Stein): the
    interval is centred on the estimate (not bias-corrected), so it always contains it."""
    n = loo.shape[0]
    if n < 3:
        raise ValueError("the jackknife needs at least 3 utterances")
    dev = loo - loo.mean(0)
    se = np.sqrt((n - 1) / n * np.einsum("i...,i...->...", dev, dev))
    half = t_quantile(alpha, n - 1) * se
    return point - half, point + half


def t_interval(values: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) over axis 0 of independent values (B, ...): ``mean -/+ t_{B-1} s /
    sqrt(B)``, ``s`` the sample standard deviation; lo and hi are NaN for B < 2."""
    v = np.asarray(values, dtype=np.float64)
    mean = v.mean(0)
    B = v.shape[0]
    if B < 2:
        nan = np.full(mean.shape, np.nan)
        return mean, nan, nan.copy()
    half = t_quantile(alpha, B - 1) * v.std(0, ddof=1) / np.sqrt(B)
    return mean, mean - half, mean + half


def centred_percentiles(
    point: np.ndarray, reps: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Half-sampling interval (McCarthy 1969): ``point`` plus the alpha/2 and 1-alpha/2
    quantiles of the replicate values ``reps`` (R, ...) minus their mean (NaN-aware)."""
    return percentiles(reps - (np.nanmean(reps, axis=0) - point), alpha)
