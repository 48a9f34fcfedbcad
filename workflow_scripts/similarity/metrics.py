"""Layer-similarity metrics for stacks of transformer hidden states.

Input convention
----------------
A *layer stack* ``H`` has shape ``(L, N, T, D)`` (layers, utterances, frames, dims) or
``(L, N, F)`` (``F`` = already flattened features). It may be a ``torch.Tensor`` (CPU or
CUDA; computation then runs on that device) or a ``numpy`` array / memmap of any float dtype
(float16 caches included). Layer 0 is the input to the first transformer block. Data are
read and cast to float64 *chunk by chunk* (at most ``_WORK_BYTES`` per chunk), so a float16
cache is never materialised in float64 as a whole. Contiguous inputs are expected (the
``(L, N, F)`` view of a 4-D stack is then free).

Every all-pairs function returns an ``(L, L)`` float64 numpy array. Metrics that are means
over utterances (cosine, angular distance, mutual k-NN, block influence) can return their
per-utterance values (``return_per_utterance=True``) for :func:`bootstrap_ci`.

CKA memory strategy (``method`` argument of :func:`hsic_matrix` / :func:`cka_matrix`)
------------------------------------------------------------------------------------
* ``"gram"``: every layer's centred ``N x N`` Gram matrix is computed once in float64 (by
  streaming feature chunks through ``X @ X.T``) and kept; HSIC for all ``L^2`` pairs is then
  one ``(L, N^2) @ (N^2, L)`` product. Needs ``8 L N^2`` bytes; required for the cheap CKA
  bootstrap (:func:`cka_bootstrap_ci`).
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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

METRIC_NAMES = (
    "cosine",
    "cka_linear",
    "cka_rbf",
    "mutual_knn",
    "angular_distance",
    "block_influence",
)

#: Target size (bytes) of one float64 working chunk (features cast per chunk, Gram row blocks).
_WORK_BYTES = 256 * 2**20
#: Default memory allowed for cached CKA Gram matrices / row blocks (bytes).
GRAM_MEMORY_LIMIT = 2 * 2**30
#: Above this many utterances the RBF median distance is taken on a fixed random subset.
RBF_MEDIAN_MAX_N = 4096
_EPS = 1e-12
_F64 = torch.float64


# ----------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------
class _Stack:
    """Read-only view of a layer stack as ``(L, N, F)`` with chunked float64 access."""

    def __init__(self, H: Any):
        if isinstance(H, torch.Tensor):
            H = H.detach()
            self.is_torch = True
            self.device = H.device
        else:
            H = np.asarray(H)
            self.is_torch = False
            self.device = torch.device("cpu")
        if H.ndim == 4:
            L, N, T, D = H.shape
            self.frames: tuple[int, int] | None = (int(T), int(D))
        elif H.ndim == 3:
            L, N, _ = H.shape
            self.frames = None
        else:
            raise ValueError(f"layer stack must be (L, N, T, D) or (L, N, F), got {H.shape}")
        self.data = H.reshape(L, N, -1)
        self.L, self.N, self.F = (int(s) for s in self.data.shape)
        if self.L < 1 or self.N < 1 or self.F < 1:
            raise ValueError(f"empty layer stack {tuple(H.shape)}")

    def get(self, layer, rows=slice(None), cols=slice(None)) -> torch.Tensor:
        """float64 tensor ``data[layer, rows, cols]`` on the compute device."""
        if isinstance(rows, np.ndarray) and self.is_torch:
            rows = torch.as_tensor(rows, device=self.device)
        x = self.data[layer, rows, cols]
        if not self.is_torch:
            x = torch.from_numpy(np.ascontiguousarray(x))
        return x.to(device=self.device, dtype=_F64)

    def feature_chunks(self, nrows: int) -> list[slice]:
        """Column slices such that an ``(nrows, chunk)`` float64 block fits ``_WORK_BYTES``."""
        fc = max(1, _WORK_BYTES // (8 * max(1, nrows)))
        return [slice(a, min(a + fc, self.F)) for a in range(0, self.F, fc)]

    def utterance_chunks(self, per_utt_bytes: int) -> list[slice]:
        c = max(1, _WORK_BYTES // max(1, per_utt_bytes))
        return [slice(a, min(a + c, self.N)) for a in range(0, self.N, c)]

    def require_frames(self, what: str) -> tuple[int, int]:
        if self.frames is None:
            raise ValueError(f"{what} needs a 4-D (L, N, T, D) stack")
        return self.frames


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", _F64).numpy()


def _gram(st: _Stack, layer: int, rows=slice(None)) -> torch.Tensor:
    """Linear Gram rows ``X[rows] @ X.T`` of one layer in float64, streamed over features.

    When ``rows`` selects all rows, only the upper triangle of a grid of ``nb x nb`` row
    blocks (``nb = min(4, N // 256)``) is multiplied and mirrored, i.e.
    (nb+1)/(2 nb) of the flops of a plain ``X @ X.T`` (measured ~20 % faster on CPU).
    """
    full = isinstance(rows, slice) and rows == slice(None)
    if full:
        n = st.N
        nb = min(4, max(1, n // 256))
        edges = [round(i * n / nb) for i in range(nb + 1)]
        out = torch.zeros((n, n), dtype=_F64, device=st.device)
        for cs in st.feature_chunks(n):
            X = st.get(layer, slice(None), cs)
            for a in range(nb):
                ra = slice(edges[a], edges[a + 1])
                for b in range(a, nb):
                    rb = slice(edges[b], edges[b + 1])
                    out[ra, rb] += X[ra] @ X[rb].T
        for a in range(nb):
            for b in range(a + 1, nb):
                ra = slice(edges[a], edges[a + 1])
                rb = slice(edges[b], edges[b + 1])
                out[rb, ra] = out[ra, rb].T
        return out
    out = None
    for cs in st.feature_chunks(st.N):
        X = st.get(layer, slice(None), cs)
        part = X[rows] @ X.T
        out = part if out is None else out.add_(part)
    return out


def _gram_subset(st: _Stack, layer: int, idx: np.ndarray) -> torch.Tensor:
    """``X[idx] @ X[idx].T`` for a subset of utterances."""
    out = None
    for cs in st.feature_chunks(len(idx)):
        X = st.get(layer, idx, cs)
        part = X @ X.T
        out = part if out is None else out.add_(part)
    return out


def _linear_stats(st: _Stack, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared norms ``||x_i||^2`` and linear-kernel row sums ``x_i . sum_j x_j``."""
    sq = torch.zeros(st.N, dtype=_F64, device=st.device)
    rowsum = torch.zeros(st.N, dtype=_F64, device=st.device)
    for cs in st.feature_chunks(st.N):
        X = st.get(layer, slice(None), cs)
        sq += (X * X).sum(1)
        rowsum += X @ X.sum(0)
    return sq, rowsum


# ----------------------------------------------------------------------------------------
# Cosine similarity
# ----------------------------------------------------------------------------------------
def _normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(_EPS)


def cosine_matrix(
    H: Any, pooling: str = "flatten", return_per_utterance: bool = False
) -> np.ndarray:
    """Cosine similarity between all pairs of layers, averaged over utterances.

    ``flatten``:   C[i, j] = mean_n  <h_i^n, h_j^n> / (||h_i^n|| ||h_j^n||), with ``h^n`` the
                   flattened ``T*D`` map of utterance ``n``.
    ``per_frame``: C[i, j] = mean_n mean_t cos(h_{i,t}^n, h_{j,t}^n) (ShortGPT style; needs a
                   4-D stack). Computed as a Gram of per-frame-normalised maps divided by T.

    Zero vectors get cosine 0. Computed with one batched float64 matmul per utterance chunk.
    Returns (L, L), or the per-utterance (N, L, L) values if ``return_per_utterance``.
    """
    st = _Stack(H)
    if pooling not in ("flatten", "per_frame"):
        raise ValueError(f"unknown pooling {pooling!r}")
    frames = st.require_frames("per_frame pooling") if pooling == "per_frame" else None
    per = torch.empty((st.N, st.L, st.L), dtype=_F64)
    for rows in st.utterance_chunks(3 * 8 * st.L * st.F):
        X = st.get(slice(None), rows).transpose(0, 1)  # (C, L, F)
        if frames is None:
            X = _normalize(X)
            scale = 1.0
        else:
            T, D = frames
            X = _normalize(X.reshape(X.shape[0], st.L, T, D)).reshape(X.shape[0], st.L, T * D)
            scale = 1.0 / T
        per[rows] = (torch.bmm(X, X.transpose(1, 2)) * scale).cpu()
    per_np = per.numpy()
    return per_np if return_per_utterance else per_np.mean(0)


# ----------------------------------------------------------------------------------------
# Angular distance
# ----------------------------------------------------------------------------------------
def angular_distance_matrix(
    H: Any, reduce: str = "last", return_per_utterance: bool = False
) -> np.ndarray:
    """Angular distance d[i, j] = arccos(cos(x_i, x_j)) / pi, averaged over utterances.

    Gromov et al. (2024). ``x`` is the last frame (``reduce="last"``), the mean-pooled frame
    (``"mean"``), every frame with the per-frame distance averaged over frames (``"all"``), or
    the flattened map (``"flatten"``, also allowed for 3-D stacks). Cosines are clipped to
    [-1, 1]; the diagonal is set to exactly 0. Zero vectors get cosine 0 (distance 0.5).
    Returns (L, L), or per-utterance (N, L, L) values if ``return_per_utterance``.
    """
    st = _Stack(H)
    if reduce not in ("last", "mean", "all", "flatten"):
        raise ValueError(f"unknown reduce {reduce!r}")
    frames = None if reduce == "flatten" else st.require_frames(f"reduce={reduce!r}")
    per = torch.empty((st.N, st.L, st.L), dtype=_F64)
    per_utt_bytes = 3 * 8 * st.L * st.F
    for rows in st.utterance_chunks(per_utt_bytes):
        if reduce == "last":
            T, D = frames
            V = st.get(slice(None), rows, slice((T - 1) * D, T * D)).transpose(0, 1)
        elif reduce == "flatten":
            V = st.get(slice(None), rows).transpose(0, 1)
        else:
            T, D = frames
            X = st.get(slice(None), rows)
            X = X.reshape(st.L, X.shape[1], T, D)
            if reduce == "mean":
                V = X.mean(2).transpose(0, 1)
            else:  # all frames: (C, T, L, D) -> per-frame cosines
                C = X.shape[1]
                V = _normalize(X.permute(1, 2, 0, 3)).reshape(C * T, st.L, D)
                cos = torch.bmm(V, V.transpose(1, 2)).clamp_(-1.0, 1.0)
                per[rows] = (torch.arccos(cos) / math.pi).reshape(C, T, st.L, st.L).mean(1).cpu()
                continue
        V = _normalize(V)
        cos = torch.bmm(V, V.transpose(1, 2)).clamp_(-1.0, 1.0)
        per[rows] = (torch.arccos(cos) / math.pi).cpu()
    per_np = per.numpy()
    idx = np.arange(st.L)
    per_np[:, idx, idx] = 0.0
    return per_np if return_per_utterance else per_np.mean(0)


# ----------------------------------------------------------------------------------------
# Block influence
# ----------------------------------------------------------------------------------------
def block_influence(H: Any, return_per_utterance: bool = False) -> np.ndarray:
    """BI_l = 1 - mean_n cos(h_l^n, h_{l+1}^n) on flattened sequences; length L-1.

    (Per-utterance values, shape (N, L-1), if ``return_per_utterance``.)
    """
    st = _Stack(H)
    per = torch.empty((st.N, max(st.L - 1, 0)), dtype=_F64)
    for rows in st.utterance_chunks(3 * 8 * st.L * st.F):
        X = _normalize(st.get(slice(None), rows))  # (L, C, F)
        per[rows] = (1.0 - (X[:-1] * X[1:]).sum(-1)).T.cpu()
    per_np = per.numpy()
    return per_np if return_per_utterance else per_np.mean(0)


def block_influence_per_token(H: Any, return_per_utterance: bool = False) -> np.ndarray:
    """ShortGPT block influence BI_l = 1 - E_{n,t} cos(x_{l,t}^n, x_{l+1,t}^n); length L-1.

    Needs a 4-D stack. (Per-utterance values (N, L-1) if ``return_per_utterance``.)
    """
    st = _Stack(H)
    T, D = st.require_frames("block_influence_per_token")
    per = torch.empty((st.N, max(st.L - 1, 0)), dtype=_F64)
    for rows in st.utterance_chunks(3 * 8 * st.L * st.F):
        X = st.get(slice(None), rows)
        X = _normalize(X.reshape(st.L, X.shape[1], T, D))
        per[rows] = (1.0 - (X[:-1] * X[1:]).sum(-1).mean(-1)).T.cpu()
    per_np = per.numpy()
    return per_np if return_per_utterance else per_np.mean(0)


# ----------------------------------------------------------------------------------------
# HSIC / CKA
# ----------------------------------------------------------------------------------------
def _centre_rows(
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


def _hsic_norm(n: int, debiased: bool) -> float:
    return 1.0 / (n * (n - 3)) if debiased else 1.0 / (n - 1) ** 2


def _median_pairwise_distance(G: torch.Tensor) -> float:
    """Median over i<j of Euclidean distances, from a linear Gram matrix ``G``."""
    sq = G.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * G).clamp_min_(0.0)
    iu = torch.triu_indices(G.shape[0], G.shape[0], 1, device=G.device)
    d = torch.sqrt(d2[iu[0], iu[1]])
    return float(np.median(_np(d))) if d.numel() else 0.0


def _median_subset(n: int) -> np.ndarray | None:
    if n <= RBF_MEDIAN_MAX_N:
        return None
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, RBF_MEDIAN_MAX_N, replace=False))


def _rbf_sigma(st: _Stack, layer: int, frac: float, G: torch.Tensor | None = None) -> float:
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
        Gs = _gram_subset(st, layer, np.arange(st.N) if sub is None else sub)
    med = _median_pairwise_distance(Gs)
    return frac * med


def _rbf_from_gram(
    G: torch.Tensor, sq_rows: torch.Tensor, sq_cols: torch.Tensor, sigma: float
) -> torch.Tensor:
    d2 = (sq_rows[:, None] + sq_cols[None, :] - 2.0 * G).clamp_min_(0.0)
    if sigma <= 0.0:  # all points identical: constant kernel
        return torch.ones_like(d2)
    return torch.exp_(d2.mul_(-1.0 / (2.0 * sigma**2)))


def _check_kernel(kernel: str, debiased: bool, n: int) -> None:
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"unknown kernel {kernel!r}")
    if debiased and n < 4:
        raise ValueError("debiased HSIC needs at least 4 utterances")
    if n < 2:
        raise ValueError("HSIC needs at least 2 utterances")


def _choose_method(st: _Stack, method: str, kernel: str, debiased: bool, limit: int) -> str:
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


def _centred_grams(
    st: _Stack, kernel: str, rbf_sigma_frac: float
) -> tuple[torch.Tensor, list[float]]:
    """All layers' double-centred kernel matrices ``H K H``, shape (L, N, N), float64.

    The biased centring is stored for the debiased estimator too (U-centring is applied in
    :func:`_hsic_from_centred`): unlike a U-centred matrix it keeps the diagonal, i.e. the
    self-similarities that tied pairs of a bootstrap resample need.
    """
    V = torch.empty((st.L, st.N, st.N), dtype=_F64, device=st.device)
    sigmas: list[float] = []
    for layer in range(st.L):
        K = _gram(st, layer)
        if kernel == "rbf":
            s = _rbf_sigma(st, layer, rbf_sigma_frac, G=K)
            sigmas.append(s)
            sq = K.diagonal().clone()
            K = _rbf_from_gram(K, sq, sq, s)
            K.fill_diagonal_(1.0)
        V[layer] = _centre_rows(K, 0, K.sum(1), K.diagonal().clone(), False)
        del K
    return V, sigmas


def _hsic_from_centred(V: torch.Tensor, debiased: bool) -> torch.Tensor:
    """All-pairs HSIC from double-centred Grams (L, N, N): one (L, N^2) @ (N^2, L) product.

    For the debiased estimator the U-centred rows are formed block by block (U-centring of
    ``H K H`` equals U-centring of ``K``) and the block products are summed.
    """
    L, n = V.shape[0], V.shape[1]
    if not debiased:
        flat = V.reshape(L, -1)
        return (flat @ flat.T) * _hsic_norm(n, False)
    rowsums = V.sum(2)
    diags = V.diagonal(dim1=1, dim2=2)
    acc = torch.zeros((L, L), dtype=_F64, device=V.device)
    B = int(max(1, min(n, _WORK_BYTES // (8 * L * n))))
    for a in range(0, n, B):
        b = min(a + B, n)
        U = V[:, a:b].clone()
        for layer in range(L):
            _centre_rows(U[layer], a, rowsums[layer], diags[layer], True)
        flat = U.reshape(L, -1)
        acc += flat @ flat.T
    return acc * _hsic_norm(n, True)


def _hsic_rowblock(
    st: _Stack, kernel: str, debiased: bool, rbf_sigma_frac: float, limit: int
) -> torch.Tensor:
    n = st.N
    B = int(max(1, min(n, limit // (8 * st.L * n * 2))))
    blocks = [(a, min(a + B, n)) for a in range(0, n, B)]
    sqs, rowsums, diags, sigmas = [], [], [], []
    for layer in range(st.L):
        sq, rs = _linear_stats(st, layer)
        if kernel == "rbf":
            s = _rbf_sigma(st, layer, rbf_sigma_frac)
            rs = torch.zeros(n, dtype=_F64, device=st.device)
            for a, b in blocks:
                K = _rbf_from_gram(_gram(st, layer, slice(a, b)), sq[a:b], sq, s)
                K[torch.arange(b - a), torch.arange(a, b)] = 1.0
                rs[a:b] = K.sum(1)
            sigmas.append(s)
            diags.append(torch.ones(n, dtype=_F64, device=st.device))
        else:
            diags.append(sq)
        sqs.append(sq)
        rowsums.append(rs)
    acc = torch.zeros((st.L, st.L), dtype=_F64, device=st.device)
    for a, b in blocks:
        Vb = torch.empty((st.L, b - a, n), dtype=_F64, device=st.device)
        for layer in range(st.L):
            K = _gram(st, layer, slice(a, b))
            if kernel == "rbf":
                K = _rbf_from_gram(K, sqs[layer][a:b], sqs[layer], sigmas[layer])
                K[torch.arange(b - a), torch.arange(a, b)] = 1.0
            Vb[layer] = _centre_rows(K, a, rowsums[layer], diags[layer], debiased)
        flat = Vb.reshape(st.L, -1)
        acc += flat @ flat.T
    return acc * _hsic_norm(n, debiased)


def _hsic_features(st: _Stack) -> torch.Tensor:
    """Biased linear HSIC via ||Xc_i^T Xc_j||_F^2 / (n-1)^2 for all layer pairs at once."""
    L, n, F = st.L, st.N, st.F
    mean = torch.zeros((L, F), dtype=_F64, device=st.device)
    chunks = st.utterance_chunks(8 * L * F)
    for rows in chunks:
        mean += st.get(slice(None), rows).sum(1)
    mean /= n
    C = torch.zeros((L * F, L * F), dtype=_F64, device=st.device)
    for rows in chunks:
        Z = (st.get(slice(None), rows) - mean[:, None, :]).transpose(0, 1).reshape(-1, L * F)
        C += Z.T @ Z
    C.square_()
    return C.reshape(L, F, L, F).sum((1, 3)) * _hsic_norm(n, False)


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
    st = _Stack(H)
    _check_kernel(kernel, debiased, st.N)
    limit = GRAM_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    m = _choose_method(st, method, kernel, debiased, limit)
    if m == "gram":
        V, _ = _centred_grams(st, kernel, rbf_sigma_frac)
        out = _hsic_from_centred(V, debiased)
    elif m == "features":
        out = _hsic_features(st)
    else:
        out = _hsic_rowblock(st, kernel, debiased, rbf_sigma_frac, limit)
    return _np(out)


def _cka_from_hsic(hs: np.ndarray) -> np.ndarray:
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
    return _cka_from_hsic(hs)


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
            _centre_rows(K, 0, K.sum(1), K.diagonal().clone(), False)
        out[b] = _cka_from_hsic(_np(_hsic_from_centred(Vb, debiased)))
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
    R = int(max(1, min(w.shape[0], _WORK_BYTES // (8 * n * (L + 2)))))
    pairs = [(i, j) for i in range(L) for j in range(i, L)]
    for s0 in range(0, w.shape[0], R):
        W = torch.as_tensor(w[s0 : s0 + R], dtype=_F64, device=V.device)  # (r, n)
        m = W.sum(1)  # (r,)
        Kw = torch.stack([W @ V[layer] for layer in range(L)], 1)  # (r, L, n)
        wKw = (Kw * W[:, None, :]).sum(2)  # (r, L)
        hs = torch.empty((W.shape[0], L, L), dtype=_F64, device=V.device)
        for i, j in pairs:
            t1 = ((W @ (V[i] * V[j])) * W).sum(1)
            t2 = (W * Kw[:, i] * Kw[:, j]).sum(1)
            hs[:, i, j] = hs[:, j, i] = t1 - 2.0 * t2 / m + wKw[:, i] * wKw[:, j] / m**2
        out[s0 : s0 + R] = _cka_from_hsic(_np(hs))
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


def _percentiles(boot: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return lo, hi


def _cka_point_and_ci(
    H: Any,
    kernel: str,
    debiased: bool,
    rbf_sigma_frac: float,
    n_boot: int,
    alpha: float,
    seed: int,
    memory_limit: int | None,
    scheme: str = "bootstrap",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if scheme not in ("bootstrap", "half"):
        raise ValueError(f"unknown bootstrap scheme {scheme!r}")
    st = _Stack(H)
    _check_kernel(kernel, debiased, st.N)
    limit = GRAM_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    if _choose_method(st, "auto", kernel, debiased, limit) != "gram":
        if n_boot > 0:
            raise MemoryError(
                f"CKA bootstrap needs the cached Grams (~{8 * (st.L + 1) * st.N**2 / 2**30:.1f}"
                " GiB); raise memory_limit or subsample utterances"
            )
        return cka_matrix(H, kernel, debiased, rbf_sigma_frac, "auto", limit), None, None
    V, _ = _centred_grams(st, kernel, rbf_sigma_frac)
    point = _cka_from_hsic(_np(_hsic_from_centred(V, debiased)))
    if n_boot <= 0:
        return point, None, None
    if scheme == "half" and st.N // 2 < (4 if debiased else 2):
        raise ValueError("too few utterances for half-sampling")
    boot = _resampled_cka(V, debiased, n_boot, seed, scheme)
    if scheme == "half":
        boot = boot - (np.nanmean(boot, axis=0) - point)
    lo, hi = _percentiles(boot, alpha)
    return point, lo, hi


def cka_bootstrap_ci(
    H: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    kernel: str = "linear",
    debiased: bool = False,
    rbf_sigma_frac: float = 0.8,
    memory_limit: int | None = None,
    scheme: str = "bootstrap",
) -> tuple[np.ndarray, np.ndarray]:
    """Resampling CI (lo, hi), each (L, L), for :func:`cka_matrix`.

    Each replicate selects utterances, takes the corresponding rows and columns of the cached
    centred Gram matrices, re-centres them and recomputes CKA; the features are never read
    again (cost per replicate ~ L N^2, vs L N^2 F for the Grams). The RBF bandwidth is kept at
    its full-sample value. Requires the Gram path to fit in ``memory_limit``.

    ``scheme="bootstrap"`` (default): percentile bootstrap, N utterances drawn with
    replacement. Caveat: a resample contains ~0.37 N tied pairs (the same utterance twice)
    whose kernel value is a self-similarity; when the Grams are diagonal-dominated (high-dim
    flattened features, small N) this inflates CKA in every replicate and the interval can
    lie entirely above the estimate.
    ``scheme="half"``: half-sampling (McCarthy 1969): N // 2 utterances without replacement
    (no ties); the spread of half-sample CKA matches the sampling spread of the full-sample
    estimate for smooth statistics, and the interval is that spread placed around the
    estimate: ``point + quantiles(cka_half - mean(cka_half))``.
    """
    _, lo, hi = _cka_point_and_ci(
        H, kernel, debiased, rbf_sigma_frac, max(1, n_boot), alpha, seed, memory_limit, scheme
    )
    return lo, hi


# ----------------------------------------------------------------------------------------
# Mutual k-NN
# ----------------------------------------------------------------------------------------
def _check_ks(ks: Sequence[int], n: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    if ks[-1] > n - 1:
        raise ValueError(f"k={ks[-1]} needs at least {ks[-1] + 1} utterances, got {n}")
    return ks


def _knn_lists(st: _Stack, kmax: int, normalize: bool) -> torch.Tensor:
    """(L, N, kmax) neighbour indices per layer, sorted by decreasing inner product."""
    n = st.N
    out = torch.empty((st.L, n, kmax), dtype=torch.long, device=st.device)
    B = int(max(1, min(n, 2 * _WORK_BYTES // (8 * n))))
    for layer in range(st.L):
        if normalize and B < n:  # the norms are needed before the first row block
            sq, _ = _linear_stats(st, layer)
            inv = 1.0 / torch.sqrt(sq).clamp_min(_EPS)
        for a in range(0, n, B):
            b = min(a + B, n)
            S = _gram(st, layer, slice(None) if (a, b) == (0, n) else slice(a, b))
            if normalize and B >= n:  # whole Gram at once: norms from its diagonal
                inv = 1.0 / torch.sqrt(S.diagonal().clamp_min(0.0)).clamp_min(_EPS)
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
    B = int(max(1, min(n, _WORK_BYTES // (8 * n))))
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
                out[k][a:b, la, :] = _np(cnt.T) / k
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
    st = _Stack(H)
    kl = _check_ks(ks, st.N)
    per = _knn_overlaps(_knn_lists(st, kl[-1], normalize), kl)
    if return_per_utterance:
        return per
    return {k: v.mean(0) for k, v in per.items()}


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
    st = _Stack(H)
    kept = [k for k in ks if 1 <= int(k) <= st.N - 1]
    if not kept:
        raise ValueError(f"no k in {tuple(ks)} is < N = {st.N}")
    per = mutual_knn_matrix(H, kept, normalize, return_per_utterance=True)
    i = np.arange(st.L - 1)
    vals = np.mean([per[int(k)][:, i, i + 1] for k in kept], axis=0)
    per_bi = 1.0 - vals
    return per_bi if return_per_utterance else per_bi.mean(0)


# ----------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------
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
    return _percentiles(boot, alpha)


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


# ----------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------
_COMMON_DEFAULTS = {"n_boot": 1000, "alpha": 0.05, "seed": 0}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "cosine": {"pooling": "flatten"},
    "cka_linear": {"debiased": False, "memory_limit": None, "ci_scheme": "bootstrap"},
    "cka_rbf": {
        "debiased": False,
        "rbf_sigma_frac": 0.8,
        "memory_limit": None,
        "ci_scheme": "bootstrap",
    },
    "mutual_knn": {"ks": (10,), "normalize": True},
    "angular_distance": {"reduce": "last"},
    "block_influence": {"variant": "sequence", "ks": (2, 4, 8, 16, 32, 64), "normalize": True},
}


def _resolve_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    if name not in _DEFAULTS:
        raise ValueError(f"unknown metric {name!r}; expected one of {METRIC_NAMES}")
    p = {**_COMMON_DEFAULTS, **_DEFAULTS[name]}
    unknown = set(params or {}) - set(p)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for metric {name!r}")
    p.update(params or {})
    if "ks" in p:
        p["ks"] = tuple(int(k) for k in p["ks"])
    return p


def _ci_or_nan(per: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if p["n_boot"] <= 0:
        nan = np.full(per.shape[1:], np.nan)
        return nan, nan.copy()
    return bootstrap_ci(per, p["n_boot"], p["alpha"], p["seed"])


def compute_metric(name: str, H: Any, params: Mapping[str, Any] | None = None) -> dict:
    """Compute metric ``name`` (one of METRIC_NAMES) on a layer stack, with bootstrap CIs.

    ``params``: the metric's keyword arguments plus ``n_boot`` (default 1000; 0 disables the
    CI, which is then NaN), ``alpha`` (0.05) and ``seed`` (0). Metric-specific keys:
    cosine: pooling; cka_linear: debiased, memory_limit, ci_scheme ("bootstrap" | "half", see
    cka_bootstrap_ci); cka_rbf: + rbf_sigma_frac;
    mutual_knn: ks, normalize; angular_distance: reduce;
    block_influence: variant ("sequence" | "per_token" | "knn"), ks, normalize (knn only).
    Unknown keys raise ValueError.

    Returns a dict with
      "metric": name, "params": resolved params, "n_layers": L, "n_utterances": N,
      "higher_is_similar": bool (False for angular_distance and block_influence),
      "kind": "matrix" | "matrix_per_k" | "vector", and
      - kind "matrix":       "matrix", "ci_lo", "ci_hi" as (L, L) arrays;
      - kind "matrix_per_k": (mutual_knn) "matrix", "ci_lo", "ci_hi" as dicts k -> (L, L);
      - kind "vector":       (block_influence) "vector", "ci_lo", "ci_hi" of length L-1,
                             entry l describing the pair (l, l+1).
    CIs: percentile bootstrap over utterances (see bootstrap_ci, cka_bootstrap_ci and
    mutual_knn_bootstrap_ci for what is resampled).
    """
    p = _resolve_params(name, params)
    st = _Stack(H)
    res: dict[str, Any] = {
        "metric": name,
        "params": p,
        "n_layers": st.L,
        "n_utterances": st.N,
        "higher_is_similar": name not in ("angular_distance", "block_influence"),
    }
    if name == "cosine":
        per = cosine_matrix(H, p["pooling"], return_per_utterance=True)
        lo, hi = _ci_or_nan(per, p)
        res.update(kind="matrix", matrix=per.mean(0), ci_lo=lo, ci_hi=hi)
    elif name == "angular_distance":
        per = angular_distance_matrix(H, p["reduce"], return_per_utterance=True)
        lo, hi = _ci_or_nan(per, p)
        res.update(kind="matrix", matrix=per.mean(0), ci_lo=lo, ci_hi=hi)
    elif name in ("cka_linear", "cka_rbf"):
        kernel = "linear" if name == "cka_linear" else "rbf"
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
        res.update(kind="matrix", matrix=point, ci_lo=lo, ci_hi=hi)
    elif name == "mutual_knn":
        per = mutual_knn_matrix(H, p["ks"], p["normalize"], return_per_utterance=True)
        mats, los, his = {}, {}, {}
        for k, v in per.items():
            mats[k] = v.mean(0)
            los[k], his[k] = _ci_or_nan(v, p)
        res.update(kind="matrix_per_k", matrix=mats, ci_lo=los, ci_hi=his)
    elif name == "block_influence":
        variant = p["variant"]
        if variant == "sequence":
            per = block_influence(H, return_per_utterance=True)
        elif variant == "per_token":
            per = block_influence_per_token(H, return_per_utterance=True)
        elif variant == "knn":
            per = knn_block_influence(H, p["ks"], p["normalize"], return_per_utterance=True)
        else:
            raise ValueError(f"unknown block_influence variant {variant!r}")
        lo, hi = _ci_or_nan(per, p)
        res.update(kind="vector", vector=per.mean(0), ci_lo=lo, ci_hi=hi)
    return res


def to_long_rows(name: str, result: Mapping[str, Any]) -> list[dict]:
    """Flatten a :func:`compute_metric` result to one row per layer pair (and per k).

    Rows: {"metric", "layer_i", "layer_j", "k", "value", "ci_lo", "ci_hi"} with python
    ints/floats; ``k`` is the neighbourhood size for mutual_knn and None otherwise. Matrix
    metrics give all L*L ordered pairs (diagonal included); block_influence gives the L-1
    pairs (l, l+1).
    """
    rows: list[dict] = []

    def add(i: int, j: int, k: int | None, v, lo, hi) -> None:
        rows.append(
            {
                "metric": name,
                "layer_i": int(i),
                "layer_j": int(j),
                "k": k,
                "value": float(v),
                "ci_lo": float(lo),
                "ci_hi": float(hi),
            }
        )

    kind = result.get("kind")
    if kind == "vector":
        vec, lo, hi = (np.asarray(result[x]) for x in ("vector", "ci_lo", "ci_hi"))
        for i in range(vec.shape[0]):
            add(i, i + 1, None, vec[i], lo[i], hi[i])
    elif kind == "matrix_per_k":
        for k in sorted(result["matrix"]):
            m, lo, hi = result["matrix"][k], result["ci_lo"][k], result["ci_hi"][k]
            for i, j in np.ndindex(*m.shape):
                add(i, j, int(k), m[i, j], lo[i, j], hi[i, j])
    elif kind == "matrix":
        m, lo, hi = (np.asarray(result[x]) for x in ("matrix", "ci_lo", "ci_hi"))
        for i, j in np.ndindex(*m.shape):
            add(i, j, None, m[i, j], lo[i, j], hi[i, j])
    else:
        raise ValueError(f"result of unknown kind {kind!r}")
    return rows
