"""Mutual k-nearest-neighbour alignment (Huh et al. 2024) between layers, its CIs
(half-sampling with the neighbour sets recomputed, the default; or a bootstrap conditional on
the neighbour sets), and the k-NN block influence built on it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from workflow_scripts.similarity import intervals
from workflow_scripts.similarity.bootstrap import bootstrap_ci, mean_and_ci
from workflow_scripts.similarity.hsic import GRAM_MEMORY_LIMIT
from workflow_scripts.similarity.stack import (
    EPS,
    Stack,
    chunk_rows,
    gram,
    linear_stats,
    to_numpy,
)


def _check_ks(ks: Sequence[int], n: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    if ks[-1] > n - 1:
        raise ValueError(f"k={ks[-1]} needs at least {ks[-1] + 1} utterances, got {n}")
    return ks


def _knn_lists(
    st: Stack, kmax: int, normalize: bool, keep_order: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, N, kmax) neighbour indices per layer, sorted by decreasing inner product, and with
    ``keep_order`` every row's full order, (L, N, N) int32 (all utterances by decreasing
    score, itself last; ``4 L N^2`` bytes), else None."""
    n = st.N
    out = torch.empty((st.L, n, kmax), dtype=torch.long, device=st.device)
    order = torch.empty((st.L, n, n), dtype=torch.int32, device=st.device) if keep_order else None
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
            if order is not None:
                order[layer, a:b] = torch.argsort(S, dim=1, descending=True)
    return out, order


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
    per = _knn_overlaps(_knn_lists(st, kl[-1], normalize)[0], kl)
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
    resample with duplicated utterances would otherwise change who is whose neighbour, and
    one without duplicates has fewer distinct utterances, while the score depends on N), so
    the interval reflects the spread over utterances of the per-utterance agreement only.
    It treats the overlaps as independent although neighbouring utterances share neighbours:
    as an interval for ``E[score_N]``, the expected score at N utterances, it is too narrow
    (83% coverage in the simulation of ``tests/test_similarity_coverage.py``, where
    :func:`mutual_knn_half_ci` reaches 96%). The ``ci_scheme`` label says "conditional".
    """
    per = mutual_knn_matrix(H, ks, normalize, return_per_utterance=True)
    return {k: bootstrap_ci(v, n_boot, alpha, seed) for k, v in per.items()}


def _half_sample_lists(order: torch.Tensor, rows: torch.Tensor, kmax: int) -> torch.Tensor:
    """(L, r, m, kmax) neighbour lists inside r half-samples ``rows`` (r, m) of global
    utterance ids, as local indices 0..m-1: the first ``kmax`` members of the half-sample along
    each member's full order (:func:`_knn_lists`), i.e. its k-NN recomputed in the half-sample
    (the utterance itself comes last in its order, so it is never its own neighbour).

    Only a prefix of each order is scanned: ``2 kmax + 8 sqrt(kmax) + 16`` places hold
    ``kmax`` drawn utterances but with probability ~1e-8 (half of the places are drawn); the
    whole order is scanned for a chunk where some row falls short, so the result is exact.
    """
    L, n = order.shape[:2]
    r, m = rows.shape
    local = torch.full((r, n), m, dtype=torch.long, device=order.device)  # m: not drawn
    local.scatter_(1, rows, torch.arange(m, device=order.device).expand(r, m))
    q = min(n, 2 * kmax + 8 * math.isqrt(kmax) + 16)
    while True:
        ordr = order[:, rows, :q].long()  # (L, r, m, q): global ids by decreasing score
        loc = local[None, :, None, :].expand(L, r, m, n).gather(3, ordr)
        del ordr
        drawn = loc < m
        rank = drawn.cumsum(3, dtype=torch.int32)  # 1 + rank inside the half-sample
        if q == n or bool((rank[..., -1] >= kmax).all()):
            break
        q = n  # some row has fewer than kmax drawn utterances in the prefix
    slot = torch.where(drawn & (rank <= kmax), rank - 1, kmax).long()  # kmax: discarded
    lists = torch.empty((L, r, m, kmax + 1), dtype=torch.long, device=order.device)
    return lists.scatter_(3, slot, loc)[..., :kmax]


def _half_sample_scores(
    order: torch.Tensor, ks: Sequence[int], n_boot: int, seed: int
) -> dict[int, np.ndarray]:
    """Mutual k-NN of ``n_boot`` half-samples, dict k -> (n_boot, L, L): each draws m = N // 2
    utterances without replacement (seeded) and recomputes every utterance's neighbour set
    within the half-sample (:func:`_half_sample_lists`, from the full orders of
    :func:`_knn_lists`). As in :func:`_knn_overlaps`, the overlap of layers a and b at i counts
    the first k of i's a-neighbours whose rank among i's b-neighbours is below k. Replicates
    are batched: a chunk holds about ``40 L m N + 20 L^2 m kmax`` bytes per replicate (at least
    one replicate, else ``WORK_BYTES``). O(L m kmax + L^2 m kmax) per replicate, for all ks."""
    L, n = order.shape[:2]
    m, kmax = n // 2, max(ks)
    rng = np.random.default_rng(seed)
    subsets = np.sort(np.stack([rng.permutation(n)[:m] for _ in range(n_boot)]), axis=1)
    out = {k: np.empty((n_boot, L, L)) for k in ks}
    R = chunk_rows(n_boot, 40 * L * m * n + 20 * L * L * m * kmax)
    ranks = torch.arange(kmax, dtype=torch.int32, device=order.device)
    for r0 in range(0, n_boot, R):
        rows = torch.as_tensor(subsets[r0 : r0 + R], device=order.device)  # (r, m)
        r = rows.shape[0]
        nbrs = _half_sample_lists(order, rows, kmax).transpose(0, 1)  # (r, L, m, kmax)
        rank = torch.full((r, L, m, m), kmax, dtype=torch.int32, device=order.device)
        rank.scatter_(3, nbrs, ranks.expand(r, L, m, kmax))
        # cross[q, a, b, i, p]: rank among i's b-neighbours of i's p-th a-neighbour
        cross = rank[:, None].expand(r, L, L, m, m).gather(4, nbrs[:, :, None].expand(
            r, L, L, m, kmax))  # fmt: skip
        del rank
        # the pair counts at k iff p < k and cross < k, i.e. max(p, cross) < k: one histogram
        # of max(p, cross) per (replicate, a, b) gives every k by a cumulative sum
        top = torch.maximum(cross, ranks).reshape(r * L * L, m * kmax).long()
        top += torch.arange(r * L * L, device=order.device)[:, None] * (kmax + 1)
        hist = torch.bincount(top.reshape(-1), minlength=r * L * L * (kmax + 1))
        below = hist.reshape(r, L, L, kmax + 1).cumsum(3)  # [..., j]: max(p, cross) <= j
        for k in ks:
            out[k][r0 : r0 + r] = to_numpy(below[..., k - 1]) / (k * m)
    return out


def mutual_knn_half_ci(
    H: Any,
    ks: Sequence[int] = (10,),
    normalize: bool = True,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """:func:`mutual_knn_matrix` (dict k -> (L, L)) with its half-sampling CI (dicts k -> lo,
    k -> hi): the spread of the score over half-samples of N // 2 utterances, each with its
    neighbour sets recomputed (:func:`_half_sample_scores`), placed around the estimate,
    ``point + quantiles(half - mean(half))``
    (:func:`~workflow_scripts.similarity.intervals.centred_percentiles`).

    Unlike :func:`mutual_knn_bootstrap_ci` it lets the neighbour sets vary, and it has no tied
    utterances; its target is ``E[score_N]``, the expected score at N utterances (conservative
    in the coverage test). Needs k <= N // 2 - 1 and every layer's neighbour order (``4 L
    N^2`` bytes, at most ``hsic.GRAM_MEMORY_LIMIT``) plus the working chunks of
    :func:`_half_sample_scores` (``WORK_BYTES``, or one replicate if that is more).
    """
    st = Stack(H)
    kl = _check_ks(ks, st.N)
    if kl[-1] > st.N // 2 - 1:
        raise ValueError(
            f"k={kl[-1]} cannot be reached in half-samples of {st.N // 2} utterances; use "
            "ks <= N // 2 - 1 or ci_scheme 'conditional'"
        )
    if 4 * st.L * st.N**2 > GRAM_MEMORY_LIMIT:
        raise MemoryError(
            f"mutual k-NN half-sampling holds every layer's neighbour order (~"
            f"{4 * st.L * st.N**2 / 2**30:.1f} GiB); use ci_scheme 'conditional' or batches"
        )
    lists, order = _knn_lists(st, kl[-1], normalize, keep_order=True)
    per = _knn_overlaps(lists, kl)
    reps = _half_sample_scores(order, kl, n_boot, seed)
    mats = {k: v.mean(0) for k, v in per.items()}
    bounds = {k: intervals.centred_percentiles(mats[k], reps[k], alpha) for k in kl}
    return mats, {k: b[0] for k, b in bounds.items()}, {k: b[1] for k, b in bounds.items()}


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
    """``mutual_knn``: dicts k -> (L, L) of :func:`mutual_knn_matrix` and its CI:
    ``ci_scheme`` "half" (:func:`mutual_knn_half_ci`) or "conditional" (the bootstrap of
    :func:`mutual_knn_bootstrap_ci`, conditional on the neighbour sets); the cell's
    ``ci_scheme`` column says which (:func:`ci_label`)."""
    if p["n_boot"] > 0 and p["ci_scheme"] == "half":
        return mutual_knn_half_ci(H, p["ks"], p["normalize"], p["n_boot"], p["alpha"], p["seed"])
    per = mutual_knn_matrix(H, p["ks"], p["normalize"], return_per_utterance=True)
    mats, los, his = {}, {}, {}
    for k, v in per.items():
        mats[k], los[k], his[k] = mean_and_ci(v, p)
    return mats, los, his


def ci_label(p: Mapping[str, Any]) -> str:
    """The ``ci_scheme`` label of a mutual k-NN cell with parameters ``p``."""
    return intervals.KNN_HALF if p["ci_scheme"] == "half" else intervals.KNN_CONDITIONAL
