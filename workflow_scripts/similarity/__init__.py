"""The similarity stage: layer-by-layer similarity of hidden-state stacks (one cell per
model x metric), and the groups of similar layers found in them.

Modules: ``registry`` (the metrics by name: defaults, direction, kind), ``stack`` (input
handling, chunked Gram helpers), ``cosine`` (cosine, angular distance, block influence),
``hsic`` / ``cka`` (kernel alignment and its resampling CIs), ``knn`` (mutual k-NN),
``bootstrap`` (percentile bootstrap of means), ``intervals`` (jackknife and t intervals, the
CI schemes' labels), ``compute`` (:func:`compute_metric` by name, long rows), ``batches`` (the
paper's per-batch protocol), ``blocks`` (block detection), ``plan`` (the rules' cells, slices
and checks; torch-free), ``run`` (one cell), ``report`` (the tables).

The public functions are importable from the package (``from workflow_scripts import
similarity; similarity.cka_matrix(H)``); they are loaded on first use, so importing the
package (or its ``plan``) does not import torch.
"""

from __future__ import annotations

from workflow_scripts.core.lazy import lazy_exports

_EXPORTS = {
    "cosine_matrix": "cosine",
    "angular_distance_matrix": "cosine",
    "block_influence": "cosine",
    "block_influence_per_token": "cosine",
    "hsic_matrix": "hsic",
    "cka_matrix": "cka",
    "cka_ci": "cka",
    "mutual_knn_matrix": "knn",
    "mutual_knn_bootstrap_ci": "knn",
    "mutual_knn_half_ci": "knn",
    "knn_block_influence": "knn",
    "bootstrap_means": "bootstrap",
    "bootstrap_ci": "bootstrap",
    "batched_metric": "batches",
    "compute_metric": "compute",
    "to_long_rows": "compute",
    "METRIC_NAMES": "registry",
    "register": "registry",
    "detect_blocks": "blocks",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
