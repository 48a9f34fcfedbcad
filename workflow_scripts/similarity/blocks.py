"""Contiguous block detection in a layer-by-layer similarity matrix.

Objective
---------
For a layer similarity matrix ``S`` (L x L, higher = more similar; for a distance metric the
caller passes ``1 - d``, see :func:`similarity_from_distance`) and a segmentation of layers
``0..L-1`` into contiguous blocks, every block ``B`` gets the *contrast*

    c(B) = |B| / L * ( w(B) - o(B) ),
    w(B) = mean of S[i, j] over i != j in B          (within-block mean similarity),
    o(B) = mean of S[i, j] over i in B, j not in B   (between-block mean similarity),

using the symmetric part ``(S + S^T) / 2``. A block that is a singleton (no within pairs) or
the whole range (no outside) has contrast 0: it carries no evidence either way. The score of
a segmentation is the sum of its blocks' contrasts, i.e. the average over layers of
"mean similarity to my block-mates minus mean similarity to the other layers".

Because ``c(B)`` depends only on ``B`` (``o(B)`` uses the band ``S[B, :]`` minus the block),
the best segmentation into exactly ``b`` blocks is found exactly by dynamic programming over
segment end points, with O(1) segment costs from 2-D prefix sums: O(b L^2) for one ``b``,
O(L^3) for all ``b`` up to ``L``.

Choosing the number of blocks
-----------------------------
``scores[b-1]`` is the best score with exactly ``b`` blocks (``scores[0] == 0``). The
objective itself penalises splitting a coherent block (the halves become each other's
"outside", raising ``o``) and merging unrelated ones (lowering ``w``), so:

* ``criterion="max"`` (default): the smallest ``b`` whose score is within ``tol`` of the best
  score over all ``b`` (ties go to fewer blocks; a matrix with no contrast, e.g. a constant
  one, gives one block).
* ``criterion="penalized"``: the smallest ``b`` maximising ``scores[b-1] - penalty * (b-1)``
  (within ``tol``); use ``penalty > 0`` to demand a minimum gain per extra block, e.g. to
  ignore splits driven by noise.

Everything is deterministic (ties are broken towards earlier split points / fewer blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockSegmentation:
    """Result of :func:`detect_blocks`.

    boundaries:    chosen blocks as inclusive (first_layer, last_layer) pairs.
    n_blocks:      len(boundaries).
    scores:        (max_blocks,) best objective with exactly b blocks at index b-1.
    segmentations: best segmentation for each b (index b-1), same format as boundaries.
    criterion:     the criterion used.
    """

    boundaries: list[tuple[int, int]]
    n_blocks: int
    scores: np.ndarray
    segmentations: list[list[tuple[int, int]]]
    criterion: str


def similarity_from_distance(D) -> np.ndarray:
    """Convert a distance matrix (e.g. angular distance in [0, 1]) to a similarity ``1 - D``."""
    return 1.0 - np.asarray(D, dtype=np.float64)


def segment_contrasts(S) -> np.ndarray:
    """(L+1, L+1) array ``c[a, b]`` = contrast of the block of layers ``a..b-1`` (a < b).

    Entries with a >= b are -inf. See the module docstring for the definition.
    """
    S = np.asarray(S, dtype=np.float64)
    S = 0.5 * (S + S.T)
    L = S.shape[0]
    P = np.zeros((L + 1, L + 1))
    P[1:, 1:] = S.cumsum(0).cumsum(1)
    dg = np.concatenate([[0.0], np.cumsum(np.diag(S))])
    a = np.arange(L + 1)[:, None]
    b = np.arange(L + 1)[None, :]
    m = (b - a).astype(np.float64)
    within = P[b, b] - P[a, b] - P[b, a] + P[a, a]  # sum S[a:b, a:b]
    band = P[b, L] - P[a, L]  # sum S[a:b, :]
    trace = dg[b] - dg[a]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (within - trace) / (m * (m - 1))
        o = (band - within) / (m * (L - m))
        c = m / L * (w - o)
    c = np.where((m >= 2) & (m <= L - 1), c, 0.0)
    return np.where(m >= 1, c, -np.inf)


def detect_blocks(
    S,
    max_blocks: int | None = None,
    criterion: str = "max",
    penalty: float = 0.0,
    tol: float = 1e-9,
) -> BlockSegmentation:
    """Optimal contiguous segmentation of layers into blocks of mutually similar layers.

    ``S``: (L, L) finite similarity matrix (higher = more similar). ``max_blocks``: largest
    number of blocks considered (default L). ``criterion``: "max" or "penalized" (see the
    module docstring), ``penalty`` used by "penalized", ``tol`` the tie tolerance.
    Returns a :class:`BlockSegmentation`; e.g. ``boundaries == [(0, 4), (5, 11)]``.
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise ValueError(f"S must be a non-empty square matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("S contains non-finite values")
    if criterion not in ("max", "penalized"):
        raise ValueError(f"unknown criterion {criterion!r}")
    L = S.shape[0]
    bmax = L if max_blocks is None else int(max_blocks)
    if not 1 <= bmax:
        raise ValueError("max_blocks must be >= 1")
    bmax = min(bmax, L)
    c = segment_contrasts(S)

    # best[b, j]: best score covering layers 0..j-1 with b blocks; arg[b, j]: last split.
    best = np.full((bmax + 1, L + 1), -np.inf)
    arg = np.zeros((bmax + 1, L + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for nb in range(1, bmax + 1):
        for j in range(nb, L + 1):
            cand = best[nb - 1, :j] + c[:j, j]
            i = int(np.argmax(cand))
            best[nb, j] = cand[i]
            arg[nb, j] = i

    segmentations: list[list[tuple[int, int]]] = []
    for nb in range(1, bmax + 1):
        seg, j = [], L
        for level in range(nb, 0, -1):
            i = int(arg[level, j])
            seg.append((i, j - 1))
            j = i
        segmentations.append(seg[::-1])
    scores = best[1:, L].copy()

    pen = penalty if criterion == "penalized" else 0.0
    objective = scores - pen * np.arange(bmax)
    chosen = int(np.flatnonzero(objective >= objective.max() - tol)[0])
    return BlockSegmentation(
        boundaries=segmentations[chosen],
        n_blocks=chosen + 1,
        scores=scores,
        segmentations=segmentations,
        criterion=criterion,
    )


def labels_from_boundaries(boundaries: list[tuple[int, int]], n_layers: int) -> np.ndarray:
    """Block label (0, 1, ...) of every layer, from inclusive (first, last) boundaries."""
    labels = np.full(n_layers, -1, dtype=np.int64)
    for lab, (a, b) in enumerate(boundaries):
        labels[a : b + 1] = lab
    if (labels < 0).any():
        raise ValueError("boundaries do not cover all layers")
    return labels
