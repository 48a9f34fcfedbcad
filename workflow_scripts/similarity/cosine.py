"""Cosine-based metrics: cosine similarity, angular distance (Gromov et al. 2024) and block
influence (ShortGPT), each a mean over utterances of per-utterance values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from workflow_scripts.similarity import intervals
from workflow_scripts.similarity.bootstrap import mean_and_ci
from workflow_scripts.similarity.knn import knn_block_influence
from workflow_scripts.similarity.stack import F64, Stack, normalize


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
    st = Stack(H)
    if pooling not in ("flatten", "per_frame"):
        raise ValueError(f"unknown pooling {pooling!r}")
    frames = st.require_frames("per_frame pooling") if pooling == "per_frame" else None
    per = torch.empty((st.N, st.L, st.L), dtype=F64)
    for rows in st.utterance_chunks(3 * 8 * st.L * st.F):
        X = st.get(slice(None), rows).transpose(0, 1)  # (C, L, F)
        if frames is None:
            X = normalize(X)
            scale = 1.0
        else:
            T, D = frames
            X = normalize(X.reshape(X.shape[0], st.L, T, D)).reshape(X.shape[0], st.L, T * D)
            scale = 1.0 / T
        per[rows] = (torch.bmm(X, X.transpose(1, 2)) * scale).cpu()
    per_np = per.numpy()
    return per_np if return_per_utterance else per_np.mean(0)


def _angular_chunk(st: Stack, rows: slice, reduce: str) -> torch.Tensor:
    """(C, L, L) angular distances of the utterances ``rows`` (see angular_distance_matrix)."""
    if reduce == "flatten":
        V = st.get(slice(None), rows).transpose(0, 1)
    else:
        T, D = st.frames
        if reduce == "last":
            V = st.get(slice(None), rows, slice((T - 1) * D, T * D)).transpose(0, 1)
        else:
            X = st.get(slice(None), rows)
            X = X.reshape(st.L, X.shape[1], T, D)
            if reduce == "mean":
                V = X.mean(2).transpose(0, 1)
            else:  # all frames: (C, T, L, D) -> per-frame cosines
                C = X.shape[1]
                V = normalize(X.permute(1, 2, 0, 3)).reshape(C * T, st.L, D)
                cos = torch.bmm(V, V.transpose(1, 2)).clamp_(-1.0, 1.0)
                return (torch.arccos(cos) / math.pi).reshape(C, T, st.L, st.L).mean(1)
    V = normalize(V)
    cos = torch.bmm(V, V.transpose(1, 2)).clamp_(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


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
    st = Stack(H)
    if reduce not in ("last", "mean", "all", "flatten"):
        raise ValueError(f"unknown reduce {reduce!r}")
    if reduce != "flatten":
        st.require_frames(f"reduce={reduce!r}")
    per = torch.empty((st.N, st.L, st.L), dtype=F64)
    for rows in st.utterance_chunks(3 * 8 * st.L * st.F):
        per[rows] = _angular_chunk(st, rows, reduce).cpu()
    per_np = per.numpy()
    idx = np.arange(st.L)
    per_np[:, idx, idx] = 0.0
    return per_np if return_per_utterance else per_np.mean(0)


def block_influence(H: Any, return_per_utterance: bool = False) -> np.ndarray:
    """BI_l = 1 - mean_n cos(h_l^n, h_{l+1}^n) on flattened sequences; length L-1.

    (Per-utterance values, shape (N, L-1), if ``return_per_utterance``.)
    """
    st = Stack(H)
    per = torch.empty((st.N, max(st.L - 1, 0)), dtype=F64)
    for rows in st.utterance_chunks(3 * 8 * st.L * st.F):
        X = normalize(st.get(slice(None), rows))  # (L, C, F)
        per[rows] = (1.0 - (X[:-1] * X[1:]).sum(-1)).T.cpu()
    per_np = per.numpy()
    return per_np if return_per_utterance else per_np.mean(0)


def block_influence_per_token(H: Any, return_per_utterance: bool = False) -> np.ndarray:
    """ShortGPT block influence BI_l = 1 - E_{n,t} cos(x_{l,t}^n, x_{l+1,t}^n); length L-1.

    Needs a 4-D stack. (Per-utterance values (N, L-1) if ``return_per_utterance``.)
    """
    st = Stack(H)
    T, D = st.require_frames("block_influence_per_token")
    per = torch.empty((st.N, max(st.L - 1, 0)), dtype=F64)
    for rows in st.utterance_chunks(3 * 8 * st.L * st.F):
        X = st.get(slice(None), rows)
        X = normalize(X.reshape(st.L, X.shape[1], T, D))
        per[rows] = (1.0 - (X[:-1] * X[1:]).sum(-1).mean(-1)).T.cpu()
    per_np = per.numpy()
    return per_np if return_per_utterance else per_np.mean(0)


# ----------------------------------------------------------------------------------------
# Registry entries (workflow_scripts.similarity.registry): (H, params) -> (value, lo, hi)
# ----------------------------------------------------------------------------------------
def cosine_metric(H: Any, p: Mapping[str, Any]):
    """``cosine``: :func:`cosine_matrix` with its bootstrap CI."""
    return mean_and_ci(cosine_matrix(H, p["pooling"], return_per_utterance=True), p)


def angular_distance_metric(H: Any, p: Mapping[str, Any]):
    """``angular_distance``: :func:`angular_distance_matrix` with its bootstrap CI."""
    return mean_and_ci(angular_distance_matrix(H, p["reduce"], return_per_utterance=True), p)


def block_influence_metric(H: Any, p: Mapping[str, Any]):
    """``block_influence``: variant ``sequence`` (:func:`block_influence`), ``per_token``
    (:func:`block_influence_per_token`) or ``knn``
    (:func:`workflow_scripts.similarity.knn.knn_block_influence`), with its bootstrap CI."""
    variant = p["variant"]
    if variant == "sequence":
        per = block_influence(H, return_per_utterance=True)
    elif variant == "per_token":
        per = block_influence_per_token(H, return_per_utterance=True)
    elif variant == "knn":
        per = knn_block_influence(H, p["ks"], p["normalize"], return_per_utterance=True)
    else:
        raise ValueError(f"unknown block_influence variant {variant!r}")
    return mean_and_ci(per, p)


def block_influence_ci_label(p: Mapping[str, Any]) -> str:
    """The ``ci_scheme`` label of a block influence cell: the k-NN variant's per-utterance
    values are conditional on the neighbour sets (see
    :func:`workflow_scripts.similarity.knn.mutual_knn_bootstrap_ci`)."""
    return intervals.KNN_CONDITIONAL if p["variant"] == "knn" else intervals.PERCENTILE
