"""Mutual k-nearest-neighbour alignment (Huh et al. 2024) between layers, its bootstrap CI,
and the k-NN block influence built on it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from workflow_scripts.similarity.bootstrap import bootstrap_ci, mean_and_ci
from workflow_scripts.similarity.stack import EPS, Stack, chunk_rows, gram, linear_stats, to_numpy


def _check_ks(ks: Sequence[int], n: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    if ks[-1] > n - 1:
        raise ValueError(f"k={ks[-1]} needs at least {ks[-1] + 1} utterances, got {n}")
    return ks


def _knn_lists(st: Stack, kmax: int, normalize: bool) -> torch.Tensor:
    """(L, N, kmax) neighbour indices per layer, sorted by decreasing inner product."""
    n = st.N
    out = torch.empty((st.L, n, kmax), dtype=torch.long, device=st.device)
    B = chunk_rows(n, 4 * n)  # Gram row blocks of 2 working chunks
    for layer in range(st.L):
        if normalize and B < n:  # the norms are needed before the first row block
            sq, _ = linear_stats(st, layer)
            inv = 1.0 / torch.sqrt(sq).clamp_min(EPS)
        for a in range(0, n, B):
            b = min(a + B, n)
            S = gram(st, layer, slice(None) if (a, b) == (0, n) else slice(a, b))
            if normalize and B >= n:  # whole Gram at once: norms from its diagonal
                inv = 1.0 / torch.sqrt(S.diagonal().clamp_min(0.0)).clamp_min(EPS)
            if normalize:
                S *= inv[a:b, None]
                S *= inv[None, :]
            S[torch.arange(b - a), torch.arange(a, b)] = -math.inf
            out[layer, a:b] = torch.topk(S, kmax, dim=1, largest=True, sorted=True).indices
    return out


def _knn_overlaps(nbrs: torch.Tensor, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per-utterance mutual-kNN scores |kNN_A(i) & kNN_B(i)| / k, dict k -> (N, L, L)."""
    L, n, kmax = nbrs.shape
    out = {k: np.empty((n, L, L)) for k in ks}
    B = chunk_rows(n, 8 * n)
    ranks_arange = torch.arange(kmax, device=nbrs.device)
    for a in range(0, n, B):
        b = min(a + B, n)
        idx = nbrs[:, a:b]  # (L, Bn, kmax)
        for la in range(L):
            rank = torch.full((b - a, n), kmax, dtype=torch.long, device=nbrs.device)
            rank.scatter_(1, idx[la], ranks_arange.expand(b - a, kmax))
            R = rank.unsqueeze(0).expand(L, b - a, n).gather(2, idx)  # (L, Bn, kmax)
            for k in ks:
                cnt = (R[:, :, :k] < k).sum(-1)  # (L, Bn)
                out[k][a:b, la, :] = to_numpy(cnt.T) / k
    return out


def mutual_knn_matrix(
    H: Any,
    ks: Sequence[int] = (10,),
    normalize: bool = True,
    return_per_utterance: bool = False,
) -> dict[int, np.ndarray]:
    """Mutual k-NN alignment (Huh et al. 2024) between all pairs of layers.

    For each layer, kNN_l(i) = the k utterances j != i with largest <x_i, x_j> (after L2
    normalisation of each flattened utterance vector if ``normalize``).
    score_k(A, B) = mean_i |kNN_A(i) & kNN_B(i)| / k.
    Each layer's top-max(ks) neighbour list is computed once and reused for all pairs and
    all k. Returns dict k -> (L, L) (or dict k -> per-utterance (N, L, L) values).
    """
    st = Stack(H)
    kl = _check_ks(ks, st.N)
    per = _knn_overlaps(_knn_lists(st, kl[-1], normalize), kl)
    if return_per_utterance:
        return per
    return {k: v.mean(0) for k, v in per.items()}


def mutual_knn_bootstrap_ci(
    H: Any,
    ks: Sequence[int] = (10,),
    normalize: bool = True,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Bootstrap CI for :func:`mutual_knn_matrix`: dict k -> (lo, hi), each (L, L).

    Resamples the per-utterance overlap scores. This *conditions on the neighbour sets*: the
    k-NN lists are those of the full sample and are not recomputed inside each resample (a
    resample with duplicated utterances would otherwise change who is whose neighbour), so
    the interval reflects the spread over utterances of the per-utterance agreement only.
    """
    per = mutual_knn_matrix(H, ks, normalize, return_per_utterance=True)
    return {k: bootstrap_ci(v, n_boot, alpha, seed) for k, v in per.items()}


def knn_block_influence(
    H: Any,
    ks: Sequence[int] = (2, 4, 8, 16, 32, 64),
    normalize: bool = True,
    return_per_utterance: bool = False,
) -> np.ndarray:
    """kNN block influence BI_l = 1 - mean_{k in ks} mutualkNN_k(h_l, h_{l+1}); length L-1.

    ks larger than N-1 are dropped (ValueError if none remains).
    Per-utterance values (N, L-1) if ``return_per_utterance``.
    """
    st = Stack(H)
    kept = [k for k in ks if 1 <= int(k) <= st.N - 1]
    if not kept:
        raise ValueError(f"no k in {tuple(ks)} is < N = {st.N}")
    per = mutual_knn_matrix(H, kept, normalize, return_per_utterance=True)
    i = np.arange(st.L - 1)
    vals = np.mean([per[int(k)][:, i, i + 1] for k in kept], axis=0)
    per_bi = 1.0 - vals
    return per_bi if return_per_utterance else per_bi.mean(0)


# ----------------------------------------------------------------------------------------
# Registry entry (workflow_scripts.similarity.registry): (H, params) -> (value, lo, hi)
# ----------------------------------------------------------------------------------------
def mutual_knn_metric(H: Any, p: Mapping[str, Any]):
    """``mutual_knn``: dicts k -> (L, L) of :func:`mutual_knn_matrix` and its bootstrap CI
    (conditional on the neighbour sets, see :func:`mutual_knn_bootstrap_ci`)."""
    per = mutual_knn_matrix(H, p["ks"], p["normalize"], return_per_utterance=True)
    mats, los, his = {}, {}, {}
    for k, v in per.items():
        mats[k], los[k], his[k] = mean_and_ci(v, p)
    return mats, los, his
