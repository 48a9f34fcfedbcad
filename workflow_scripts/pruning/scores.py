"""The cache scores of the similarity-ranked strategies (``scores`` of their
:mod:`~workflow_scripts.pruning.strategies` entries): functions ``(H, settings) -> scores`` of a
hidden-state stack ``H`` (L+1, N, T, D) of calibration clips. Torch, so the registry names
them as ``"workflow_scripts.pruning.scores:<name>"`` and imports them at first use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from workflow_scripts.similarity import cosine, knn


def block_influence(H, settings: Mapping[str, Any]) -> np.ndarray:
    """ShortGPT block influence 1 - cos(h_l, h_l+1) per block (length L)."""
    if settings.get("variant", "sequence") == "per_token":
        return cosine.block_influence_per_token(H)
    return cosine.block_influence(H)


def knn_block_influence(H, settings: Mapping[str, Any]) -> np.ndarray:
    """1 - mutual-kNN(h_l, h_l+1) per block (length L), averaged over ``ks``."""
    ks = settings.get("ks", (2, 4, 8, 16, 32, 64))
    return knn.knn_block_influence(H, ks, settings.get("normalize", True))


def angular_distances(H, settings: Mapping[str, Any]) -> np.ndarray:
    """The (L+1, L+1) angular-distance matrix over h_0..h_L (Gromov et al. 2024)."""
    return cosine.angular_distance_matrix(H, settings.get("reduce", "last"))
