"""Centred kernel alignment (Kornblith et al. 2019) between all pairs of layers, and its
resampling CIs over utterances from the cached centred Grams: the delete-1 jackknife (the
default), half-sampling, or the bootstrap (whose ties inflate CKA; kept for comparison)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from workflow_scripts.similarity import intervals
from workflow_scripts.similarity.bootstrap import percentiles
from workflow_scripts.similarity.hsic import (
    GRAM_MEMORY_LIMIT,
    centre_rows,
    centred_grams,
    check_kernel,
    choose_method,
    hsic_from_centred,
    hsic_matrix,
    leave_one_out_hsic,
)
from workflow_scripts.similarity.stack import F64, Stack, chunk_rows, to_numpy


def cka_from_hsic(hs: np.ndarray) -> np.ndarray:
    """CKA from an all-pairs HSIC matrix (or a stack of them, ``(..., L, L)``): HSIC(i, j) /
    sqrt(HSIC(i, i) HSIC(j, j)); NaN where the denominator is 0."""
    d = np.diagonal(hs, axis1=-2, axis2=-1)
    denom = np.sqrt(np.clip(d[..., :, None] * d[..., None, :], 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, hs / np.where(denom > 0, denom, 1.0), np.nan)
    return out


def cka_matrix(
    H: Any,
    kernel: str = "linear",
    debiased: bool = False,
    rbf_sigma_frac: float = 0.8,
    method: str = "auto",
    memory_limit: int | None = None,
) -> np.ndarray:
    """Centred kernel alignment (Kornblith et al. 2019) between all pairs of layers.

    CKA(i, j) = HSIC(K_i, K_j) / sqrt(HSIC(K_i, K_i) HSIC(K_j, K_j)), HSIC as in
    :func:`hsic_matrix` (biased or debiased). Each layer's kernel matrix is computed once.
    Entries whose denominator is 0 (a constant layer) are NaN.
    """
    hs = hsic_matrix(H, kernel, debiased, rbf_sigma_frac, method, memory_limit)
    return cka_from_hsic(hs)


def _resample_weights(n: int, n_boot: int, seed: int, scheme: str) -> np.ndarray:
    """(n_boot, n) multiplicities of each utterance in each replicate (seeded)."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, n))
    for b in range(n_boot):
        if scheme == "bootstrap":
            w[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
        else:
            w[b, rng.permutation(n)[: n // 2]] = 1.0
    return w


def _resampled_cka_gather(V: torch.Tensor, debiased: bool, w: np.ndarray) -> np.ndarray:
    """(R, L, L) CKA of resamples by explicit gathering of Gram rows/columns.

    The selected rows/columns of the double-centred Grams are re-centred (this equals
    centring the raw Gram of the resample: centring removes any ``a_i + b_j + c`` term).
    Cost per replicate: gathering L N^2 entries plus an (L, N^2) @ (N^2, L) product.
    """
    L = V.shape[0]
    out = np.empty((w.shape[0], L, L))
    for b in range(w.shape[0]):
        sel = np.repeat(np.arange(w.shape[1]), w[b].astype(np.int64))
        idx = torch.as_tensor(sel, device=V.device)
        Vb = V[:, idx[:, None], idx[None, :]]
        for layer in range(L):
            K = Vb[layer]
            centre_rows(K, 0, K.sum(1), K.diagonal().clone(), False)
        out[b] = cka_from_hsic(to_numpy(hsic_from_centred(Vb, debiased)))
    return out


def _resampled_cka_weighted(V: torch.Tensor, w: np.ndarray) -> np.ndarray:
    """(R, L, L) biased CKA of resamples from multiplicity weights, no gathering.

    With P the selection matrix of a resample, the raw Gram of the resample is P K P^T and
    tr(H P K P^T H P L P^T) = tr(K M L M) with M = P^T H P = diag(w) - w w^T / m, m = sum(w):
        tr(K M L M) = w^T (K o L) w - (2/m) sum_b w_b (K w)_b (L w)_b + (w^T K w)(w^T L w) / m^2.
    Replicates are batched, so the work is GEMMs (R, N) @ (N, N) per layer pair.
    """
    L, n = V.shape[0], V.shape[1]
    out = np.empty((w.shape[0], L, L))
    R = chunk_rows(w.shape[0], 8 * n * (L + 2))
    pairs = [(i, j) for i in range(L) for j in range(i, L)]
    for s0 in range(0, w.shape[0], R):
        W = torch.as_tensor(w[s0 : s0 + R], dtype=F64, device=V.device)  # (r, n)
        m = W.sum(1)  # (r,)
        Kw = torch.stack([W @ V[layer] for layer in range(L)], 1)  # (r, L, n)
        wKw = (Kw * W[:, None, :]).sum(2)  # (r, L)
        hs = torch.empty((W.shape[0], L, L), dtype=F64, device=V.device)
        for i, j in pairs:
            t1 = ((W @ (V[i] * V[j])) * W).sum(1)
            t2 = (W * Kw[:, i] * Kw[:, j]).sum(1)
            hs[:, i, j] = hs[:, j, i] = t1 - 2.0 * t2 / m + wKw[:, i] * wKw[:, j] / m**2
        out[s0 : s0 + R] = cka_from_hsic(to_numpy(hs))
    return out


def _resampled_cka(
    V: torch.Tensor, debiased: bool, n_boot: int, seed: int, scheme: str
) -> np.ndarray:
    """(n_boot, L, L) CKA values from utterance-resampled centred Grams.

    scheme "bootstrap": n utterances drawn with replacement; "half": n // 2 drawn without
    replacement. Biased CKA uses the batched weighted formula, debiased CKA explicit gathering
    (its U-centring treats tied pairs specially, which the weighted form does not express).
    """
    w = _resample_weights(V.shape[1], n_boot, seed, scheme)
    if debiased:
        return _resampled_cka_gather(V, True, w)
    return _resampled_cka_weighted(V, w)


SCHEMES = ("jackknife", "half", "bootstrap")


def _resampling_ci(
    V: torch.Tensor, point: np.ndarray, debiased: bool, n_boot: int, alpha: float, seed: int,
    scheme: str,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(lo, hi) of the CKA ``point`` from the centred Grams ``V`` by ``scheme`` (see
    :func:`cka_ci`)."""
    n = V.shape[1]
    if scheme == "jackknife":
        if n - 1 < (4 if debiased else 2):
            raise ValueError("too few utterances for the jackknife")
        loo = cka_from_hsic(to_numpy(leave_one_out_hsic(V, debiased)))
        return intervals.jackknife_ci(point, loo, alpha)
    if scheme == "half" and n // 2 < (4 if debiased else 2):
        raise ValueError("too few utterances for half-sampling")
    boot = _resampled_cka(V, debiased, n_boot, seed, scheme)
    if scheme == "half":
        return intervals.centred_percentiles(point, boot, alpha)
    return percentiles(boot, alpha)


def _cka_point_and_ci(
    H: Any,
    kernel: str,
    debiased: bool,
    rbf_sigma_frac: float,
    n_boot: int,
    alpha: float,
    seed: int,
    memory_limit: int | None,
    scheme: str = "jackknife",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown CI scheme {scheme!r}; expected one of {SCHEMES}")
    st = Stack(H)
    check_kernel(kernel, debiased, st.N)
    limit = GRAM_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    if choose_method(st, "auto", kernel, debiased, limit) != "gram":
        if n_boot > 0:
            raise MemoryError(
                f"CKA CIs need the cached Grams (~{8 * (st.L + 1) * st.N**2 / 2**30:.1f}"
                " GiB); raise memory_limit or subsample utterances"
            )
        return cka_matrix(H, kernel, debiased, rbf_sigma_frac, "auto", limit), None, None
    V, _ = centred_grams(st, kernel, rbf_sigma_frac)
    point = cka_from_hsic(to_numpy(hsic_from_centred(V, debiased)))
    if n_boot <= 0:
        return point, None, None
    lo, hi = _resampling_ci(V, point, debiased, n_boot, alpha, seed, scheme)
    return point, lo, hi


def cka_ci(
    H: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    kernel: str = "linear",
    debiased: bool = False,
    rbf_sigma_frac: float = 0.8,
    memory_limit: int | None = None,
    scheme: str = "jackknife",
) -> tuple[np.ndarray, np.ndarray]:
    """Resampling CI (lo, hi) over utterances, each (L, L), for :func:`cka_matrix`.

    Every scheme works on the cached centred Gram matrices, never reading the features again,
    and keeps the RBF bandwidth at its full-sample value. Requires the Gram path to fit in
    ``memory_limit``.

    ``scheme="jackknife"`` (default): delete-1 jackknife, ``point -/+ t_{N-1} se`` with
    ``se`` from the N leave-one-out CKA matrices (:func:`~workflow_scripts.similarity.
    intervals.jackknife_ci`). The leave-one-out HSICs are downdated from sums over the Grams
    (:func:`~workflow_scripts.similarity.hsic.leave_one_out_hsic`): O(L^2 N^2) flops in all,
    the cost of one CKA matrix, not N recomputations; memory beyond the Grams is (N, L, L)
    plus one ``WORK_BYTES`` row block. ``n_boot`` and ``seed`` are unused (``n_boot`` = 0
    still disables the CI in the metric). The interval is centred on the estimate and covers
    ``E[CKA_N]``, the estimator's expectation at this N: for ``debiased=True`` that is
    close to the population CKA; for the biased estimator it lies above the population value
    by an O(1/N) term that grows with the feature dimension (see
    :mod:`workflow_scripts.similarity.intervals`).
    ``scheme="half"``: half-sampling (McCarthy 1969): N // 2 utterances without replacement
    (no ties); the spread of half-sample CKA matches the sampling spread of the full-sample
    estimate for smooth statistics, and the interval is that spread placed around the
    estimate: ``point + quantiles(cka_half - mean(cka_half))``.
    ``scheme="bootstrap"``: percentile bootstrap, N utterances drawn with replacement.
    Caveat: a resample contains ~0.37 N tied pairs (the same utterance twice) whose kernel
    value is a self-similarity; when the Grams are diagonal-dominated (high-dim flattened
    features, small N) this inflates CKA in every replicate and the interval can lie
    entirely above the estimate (N = 128: 0.9927 with [0.9934, 0.9947]).
    """
    _, lo, hi = _cka_point_and_ci(
        H, kernel, debiased, rbf_sigma_frac, max(1, n_boot), alpha, seed, memory_limit, scheme
    )
    return lo, hi


def ci_label(p: Mapping[str, Any]) -> str:
    """The ``ci_scheme`` label of a CKA cell with parameters ``p``."""
    return intervals.CKA[p["ci_scheme"]]


# ----------------------------------------------------------------------------------------
# Registry entries (workflow_scripts.similarity.registry): (H, params) -> (value, lo, hi)
# ----------------------------------------------------------------------------------------
def _cka_metric(H: Any, p: Mapping[str, Any], kernel: str):
    """CKA with the ``kernel`` and its CI (NaN when ``n_boot`` is 0)."""
    point, lo, hi = _cka_point_and_ci(
        H,
        kernel,
        p["debiased"],
        p.get("rbf_sigma_frac", 0.8),
        p["n_boot"],
        p["alpha"],
        p["seed"],
        p["memory_limit"],
        p["ci_scheme"],
    )
    if lo is None:
        lo, hi = np.full_like(point, np.nan), np.full_like(point, np.nan)
    return point, lo, hi


def cka_linear_metric(H: Any, p: Mapping[str, Any]):
    """``cka_linear``: linear-kernel :func:`cka_matrix` with its resampling CI
    (:func:`cka_ci`; NaN when ``n_boot`` is 0)."""
    return _cka_metric(H, p, "linear")


def cka_rbf_metric(H: Any, p: Mapping[str, Any]):
    """``cka_rbf``: Gaussian-kernel :func:`cka_matrix` with its resampling CI."""
    return _cka_metric(H, p, "rbf")
