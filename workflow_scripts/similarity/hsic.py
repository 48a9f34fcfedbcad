"""HSIC between all pairs of layers: kernels, centring and three memory strategies.

Memory strategy (``method`` argument of :func:`hsic_matrix` and
:func:`workflow_scripts.similarity.cka.cka_matrix`)
---------------------------------------------------------------------------------
* ``"gram"``: every layer's centred ``N x N`` Gram matrix is computed once in float64 (by
  streaming feature chunks through ``X @ X.T``) and kept; HSIC for all ``L^2`` pairs is then
  one ``(L, N^2) @ (N^2, L)`` product. Needs ``8 L N^2`` bytes; required for the CKA CIs
  (:func:`workflow_scripts.similarity.cka.cka_ci`: the jackknife's leave-one-out HSICs,
  :func:`leave_one_out_hsic`, and the resampling schemes all work on these Grams).
* ``"rowblock"``: for large ``N`` (e.g. 20,000 utterances, where the Grams alone would need
  ``L * 3.2 GB``) the same sum ``<Kc_i, Kc_j>_F`` is accumulated over blocks of Gram *rows*:
  for each row block, the rows of every layer's centred kernel matrix are formed (from the
  per-layer row sums computed beforehand) and the ``(L, B N) @ (B N, L)`` product is added.
  No ``N x N x L`` tensor is ever held (block size chosen so that ``8 L B N`` bytes fit into
  ``memory_limit``). Same flops as the Gram path for the linear kernel; the RBF kernel needs a
  second pass for the kernel row sums.
* ``"features"`` (linear, biased only): ``HSIC(X, Y) = ||Xc^T Yc||_F^2 / (n-1)^2``; the
  ``(L F) x (L F)`` cross-covariance of all layers is accumulated over utterance chunks.
  Cheap when ``L F`` is small (pooled features) and ``N`` is huge.
* ``"auto"`` picks ``"gram"`` if it fits in ``memory_limit``, else ``"features"`` if
  applicable and it fits, else ``"rowblock"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workflow_scripts.similarity.stack import (
    F64,
    Stack,
    chunk_rows,
    gram,
    gram_subset,
    linear_stats,
    to_numpy,
)

#: Default memory allowed for cached CKA Gram matrices / row blocks (bytes).
GRAM_MEMORY_LIMIT = 2 * 2**30
#: Above this many utterances the RBF median distance is taken on a fixed random subset.
RBF_MEDIAN_MAX_N = 4096


def centre_rows(
    K: torch.Tensor,
    start: int,
    rowsum: torch.Tensor,
    diag: torch.Tensor,
    debiased: bool,
) -> torch.Tensor:
    """Centre rows ``start:start+B`` of a symmetric kernel matrix (in place).

    biased:   Kc = H K H, i.e. K_ij - r_i/n - r_j/n + sum(K)/n^2 (r = row sums);
    debiased: U-centring of K~ (K with zero diagonal), r~ = row sums of K~:
              U_ij = K~_ij - r~_i/(n-2) - r~_j/(n-2) + sum(K~)/((n-1)(n-2)), U_ii = 0.
    Then  <Kc_a, Kc_b>_F / (n-1)^2  is the biased HSIC and  <U_a, U_b>_F / (n(n-3))  equals
    the unbiased HSIC estimator of Song et al. (2012).
    """
    n = rowsum.shape[0]
    B = K.shape[0]
    ar = torch.arange(B, device=K.device)
    if not debiased:
        r = rowsum / n
        K -= r[start : start + B, None]
        K -= r[None, :]
        K += rowsum.sum() / n**2
    else:
        r = rowsum - diag
        K[ar, start + ar] = 0.0
        K -= r[start : start + B, None] / (n - 2)
        K -= r[None, :] / (n - 2)
        K += r.sum() / ((n - 1) * (n - 2))
        K[ar, start + ar] = 0.0
    return K


def hsic_norm(n: int, debiased: bool) -> float:
    """The factor turning ``<Kc_a, Kc_b>_F`` into HSIC: 1/(n(n-3)) debiased, 1/(n-1)^2 biased."""
    return 1.0 / (n * (n - 3)) if debiased else 1.0 / (n - 1) ** 2


def _median_pairwise_distance(G: torch.Tensor) -> float:
    """Median over i<j of Euclidean distances, from a linear Gram matrix ``G``."""
    sq = G.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * G).clamp_min_(0.0)
    iu = torch.triu_indices(G.shape[0], G.shape[0], 1, device=G.device)
    d = torch.sqrt(d2[iu[0], iu[1]])
    return float(np.median(to_numpy(d))) if d.numel() else 0.0


def _median_subset(n: int) -> np.ndarray | None:
    if n <= RBF_MEDIAN_MAX_N:
        return None
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, RBF_MEDIAN_MAX_N, replace=False))


def _rbf_sigma(st: Stack, layer: int, frac: float, G: torch.Tensor | None = None) -> float:
    """sigma = frac * median pairwise distance of the layer's flattened utterance vectors.

    The median is exact for N <= RBF_MEDIAN_MAX_N, else taken on a fixed (seed 0) random
    subset of RBF_MEDIAN_MAX_N utterances (same subset for every layer and every method).
    """
    sub = _median_subset(st.N)
    if G is not None:
        if sub is None:
            Gs = G
        else:
            t = torch.as_tensor(sub, device=G.device)
            Gs = G[t][:, t]
    else:
        Gs = gram_subset(st, layer, np.arange(st.N) if sub is None else sub)
    med = _median_pairwise_distance(Gs)
    return frac * med


def _rbf_from_gram(
    G: torch.Tensor, sq_rows: torch.Tensor, sq_cols: torch.Tensor, sigma: float
) -> torch.Tensor:
    d2 = (sq_rows[:, None] + sq_cols[None, :] - 2.0 * G).clamp_min_(0.0)
    if sigma <= 0.0:  # all points identical: constant kernel
        return torch.ones_like(d2)
    return torch.exp_(d2.mul_(-1.0 / (2.0 * sigma**2)))


def check_kernel(kernel: str, debiased: bool, n: int) -> None:
    """ValueError for an unknown kernel or too few utterances for the estimator."""
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"unknown kernel {kernel!r}")
    if debiased and n < 4:
        raise ValueError("debiased HSIC needs at least 4 utterances")
    if n < 2:
        raise ValueError("HSIC needs at least 2 utterances")


def choose_method(st: Stack, method: str, kernel: str, debiased: bool, limit: int) -> str:
    """The memory strategy to use (see the module docstring); checks an explicit ``method``."""
    if method != "auto":
        if method not in ("gram", "rowblock", "features"):
            raise ValueError(f"unknown method {method!r}")
        if method == "features" and (kernel != "linear" or debiased):
            raise ValueError("method='features' supports only the biased linear kernel")
        return method
    if 8 * (st.L + 1) * st.N**2 <= limit:
        return "gram"
    if kernel == "linear" and not debiased and 8 * (st.L * st.F) ** 2 <= limit:
        return "features"
    return "rowblock"


def centred_grams(
    st: Stack, kernel: str, rbf_sigma_frac: float
) -> tuple[torch.Tensor, list[float]]:
    """All layers' double-centred kernel matrices ``H K H``, shape (L, N, N), float64.

    The biased centring is stored for the debiased estimator too (U-centring is applied in
    :func:`hsic_from_centred`): unlike a U-centred matrix it keeps the diagonal, i.e. the
    self-similarities that tied pairs of a bootstrap resample need.
    """
    V = torch.empty((st.L, st.N, st.N), dtype=F64, device=st.device)
    sigmas: list[float] = []
    for layer in range(st.L):
        K = gram(st, layer)
        if kernel == "rbf":
            s = _rbf_sigma(st, layer, rbf_sigma_frac, G=K)
            sigmas.append(s)
            sq = K.diagonal().clone()
            K = _rbf_from_gram(K, sq, sq, s)
            K.fill_diagonal_(1.0)
        V[layer] = centre_rows(K, 0, K.sum(1), K.diagonal().clone(), False)
        del K
    return V, sigmas


def hsic_from_centred(V: torch.Tensor, debiased: bool) -> torch.Tensor:
    """All-pairs HSIC from double-centred Grams (L, N, N): one (L, N^2) @ (N^2, L) product.

    For the debiased estimator the U-centred rows are formed block by block (U-centring of
    ``H K H`` equals U-centring of ``K``) and the block products are summed.
    """
    L, n = V.shape[0], V.shape[1]
    if not debiased:
        flat = V.reshape(L, -1)
        return (flat @ flat.T) * hsic_norm(n, False)
    rowsums = V.sum(2)
    diags = V.diagonal(dim1=1, dim2=2)
    acc = torch.zeros((L, L), dtype=F64, device=V.device)
    B = chunk_rows(n, 8 * L * n)
    for a in range(0, n, B):
        b = min(a + B, n)
        U = V[:, a:b].clone()
        for layer in range(L):
            centre_rows(U[layer], a, rowsums[layer], diags[layer], True)
        flat = U.reshape(L, -1)
        acc += flat @ flat.T
    return acc * hsic_norm(n, True)


def _hsic_rowblock(
    st: Stack, kernel: str, debiased: bool, rbf_sigma_frac: float, limit: int
) -> torch.Tensor:
    """All-pairs HSIC accumulated over blocks of Gram rows (the ``"rowblock"`` strategy)."""
    n = st.N
    B = int(max(1, min(n, limit // (8 * st.L * n * 2))))
    blocks = [(a, min(a + B, n)) for a in range(0, n, B)]
    sqs, rowsums, diags, sigmas = [], [], [], []
    for layer in range(st.L):
        sq, rs = linear_stats(st, layer)
        if kernel == "rbf":
            s = _rbf_sigma(st, layer, rbf_sigma_frac)
            rs = torch.zeros(n, dtype=F64, device=st.device)
            for a, b in blocks:
                K = _rbf_from_gram(gram(st, layer, slice(a, b)), sq[a:b], sq, s)
                K[torch.arange(b - a), torch.arange(a, b)] = 1.0
                rs[a:b] = K.sum(1)
            sigmas.append(s)
            diags.append(torch.ones(n, dtype=F64, device=st.device))
        else:
            diags.append(sq)
        sqs.append(sq)
        rowsums.append(rs)
    acc = torch.zeros((st.L, st.L), dtype=F64, device=st.device)
    for a, b in blocks:
        Vb = torch.empty((st.L, b - a, n), dtype=F64, device=st.device)
        for layer in range(st.L):
            K = gram(st, layer, slice(a, b))
            if kernel == "rbf":
                K = _rbf_from_gram(K, sqs[layer][a:b], sqs[layer], sigmas[layer])
                K[torch.arange(b - a), torch.arange(a, b)] = 1.0
            Vb[layer] = centre_rows(K, a, rowsums[layer], diags[layer], debiased)
        flat = Vb.reshape(st.L, -1)
        acc += flat @ flat.T
    return acc * hsic_norm(n, debiased)


def _hsic_features(st: Stack) -> torch.Tensor:
    """Biased linear HSIC via ||Xc_i^T Xc_j||_F^2 / (n-1)^2 for all layer pairs at once."""
    L, n, F = st.L, st.N, st.F
    mean = torch.zeros((L, F), dtype=F64, device=st.device)
    chunks = st.utterance_chunks(8 * L * F)
    for rows in chunks:
        mean += st.get(slice(None), rows).sum(1)
    mean /= n
    C = torch.zeros((L * F, L * F), dtype=F64, device=st.device)
    for rows in chunks:
        Z = (st.get(slice(None), rows) - mean[:, None, :]).transpose(0, 1).reshape(-1, L * F)
        C += Z.T @ Z
    C.square_()
    return C.reshape(L, F, L, F).sum((1, 3)) * hsic_norm(n, False)


def hsic_matrix(
    H: Any,
    kernel: str = "linear",
    debiased: bool = False,
    rbf_sigma_frac: float = 0.8,
    method: str = "auto",
    memory_limit: int | None = None,
) -> np.ndarray:
    """HSIC between all pairs of layers (utterances are the samples), (L, L) float64.

    Features of utterance n in layer l: its flattened ``T*D`` map. Kernels: linear
    ``K = X X^T``, or Gaussian ``K_ab = exp(-||x_a - x_b||^2 / (2 sigma^2))`` with
    ``sigma = rbf_sigma_frac * median pairwise distance`` (per layer).
    biased:   HSIC(K, L) = tr(K H L H) / (n-1)^2,  H = I - 11^T/n.
    debiased: HSIC_1 = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1]
              / (n(n-3)),  with K~, L~ the kernel matrices with zeroed diagonals (Song et al.
              2012), computed equivalently as <U(K), U(L)>_F / (n(n-3)) with U the U-centring.
    See the module docstring for ``method`` / memory strategy.
    """
    st = Stack(H)
    check_kernel(kernel, debiased, st.N)
    limit = GRAM_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    m = choose_method(st, method, kernel, debiased, limit)
    if m == "gram":
        V, _ = centred_grams(st, kernel, rbf_sigma_frac)
        out = hsic_from_centred(V, debiased)
    elif m == "features":
        out = _hsic_features(st)
    else:
        out = _hsic_rowblock(st, kernel, debiased, rbf_sigma_frac, limit)
    return to_numpy(out)


def leave_one_out_hsic(V: torch.Tensor, debiased: bool) -> torch.Tensor:
    """All-pairs HSIC of every leave-one-out subsample, shape (N, L, L): entry ``i`` is the
    HSIC of the N-1 utterances other than ``i`` (the estimator's own normalisation at N-1).

    From the double-centred Grams ``V`` (L, N, N) of :func:`centred_grams` by downdating sums,
    never by recomputation: with ``r_i = sum_j V_a[i, j] V_b[i, j]``, ``d`` the diagonals and
    ``S = <V_a, V_b>_F`` (and ``V`` rows summing to 0),

    * biased (m = N-1; the removed row/column re-centred, which the weighted formula of
      :func:`workflow_scripts.similarity.cka._resampled_cka_weighted` expresses with
      ``w = 1 - e_i``): ``T_i = S - 2 r_i + d_a d_b - 2 (r_i - d_a d_b) / m + d_a d_b / m^2``,
      HSIC = ``T_i / (m-1)^2``;
    * debiased: Song et al.'s formula on the zero-diagonal ``A = V_a - diag(d_a)`` restricted
      to the others (U-centring of a sub-matrix of ``V`` equals that of the raw kernel's),
      whose three sums downdate as ``tr(A B) - 2 (r_i - d_a d_b)``, ``1'A1 + 2 d_a,i`` and
      ``d_a.d_b + (V_a d_b)_i + (V_b d_a)_i + r_i - 4 d_a,i d_b,i``.

    O(L^2 N^2) flops in all (the cost of one HSIC matrix). Memory beyond ``V``: the (N, L, L)
    result, an (L, N, L) product and one row block of ``WORK_BYTES`` (no N x N temporary).
    """
    L, n = V.shape[0], V.shape[1]
    d = V.diagonal(dim1=1, dim2=2).T  # (n, L)
    dd = d[:, :, None] * d[:, None, :]  # (n, L, L): d_a,i d_b,i
    flat = V.reshape(L, -1)
    S = flat @ flat.T
    r = torch.empty((n, L, L), dtype=F64, device=V.device)
    B = chunk_rows(n, 8 * L * n)
    for a in range(0, n, B):
        X = V[:, a : a + B].transpose(0, 1)  # (B, L, n)
        r[a : a + B] = torch.bmm(X, X.transpose(1, 2))
    m = n - 1
    if not debiased:
        T = S - 2.0 * r + dd - 2.0 * (r - dd) / m + dd / m**2
        return T / (m - 1) ** 2
    P = (V @ d).permute(1, 0, 2)  # (n, L, L): (V_a d_b)_i
    tr = S - dd.sum(0) - 2.0 * (r - dd)
    tot = -d.sum(0) + 2.0 * d  # (n, L): 1' A_{-i} 1
    cross = d.T @ d + P + P.transpose(1, 2) + r - 4.0 * dd
    out = tr + tot[:, :, None] * tot[:, None, :] / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * cross
    return out / (m * (m - 3))
