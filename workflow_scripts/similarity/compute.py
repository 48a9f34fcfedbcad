"""One metric on one layer stack, by name (:func:`compute_metric`), and its long rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from workflow_scripts.similarity import registry
from workflow_scripts.similarity.stack import Stack


def compute_metric(name: str, H: Any, params: Mapping[str, Any] | None = None) -> dict:
    """Compute metric ``name`` (one of METRIC_NAMES) on a layer stack, with bootstrap CIs.

    ``params``: the metric's keyword arguments plus ``n_boot`` (default 1000; 0 disables the
    CI, which is then NaN), ``alpha`` (0.05) and ``seed`` (0). Metric-specific keys (the
    registry's defaults, :mod:`workflow_scripts.similarity.registry`):
    cosine: pooling; cka_linear: debiased, memory_limit, ci_scheme ("jackknife" | "half" |
    "bootstrap", see cka_ci); cka_rbf: + rbf_sigma_frac;
    mutual_knn: ks, normalize, ci_scheme ("half" | "conditional"); angular_distance: reduce;
    block_influence: variant ("sequence" | "per_token" | "knn"), ks, normalize (knn only).
    Unknown keys raise ValueError.

    Returns a dict with
      "metric": name, "params": resolved params, "n_layers": L, "n_utterances": N,
      "higher_is_similar": bool (False for angular_distance and block_influence),
      "ci_scheme": what the CI is (the registry entry's label, "none" when ``n_boot`` is 0),
      "kind": "matrix" | "matrix_per_k" | "vector", and
      - kind "matrix":       "matrix", "ci_lo", "ci_hi" as (L, L) arrays;
      - kind "matrix_per_k": (mutual_knn) "matrix", "ci_lo", "ci_hi" as dicts k -> (L, L);
      - kind "vector":       (block_influence) "vector", "ci_lo", "ci_hi" of length L-1,
                             entry l describing the pair (l, l+1).
    CIs (the result's "ci_scheme" says which): percentile bootstrap over utterances for the
    means over utterances (bootstrap_ci; for the k-NN block influence conditional on the
    neighbour sets), half-sampling with recomputed neighbour sets for mutual_knn by default
    (mutual_knn_half_ci), the delete-1 jackknife for CKA by default (cka_ci). All N
    utterances at once; the per-batch protocol is
    :func:`workflow_scripts.similarity.batches.batched_metric`.
    """
    p = registry.resolve_params(name, params)
    spec = registry.get(name)
    st = Stack(H)
    res: dict[str, Any] = {
        "metric": name,
        "params": p,
        "n_layers": st.L,
        "n_utterances": st.N,
        "higher_is_similar": spec.higher_is_similar,
        "ci_scheme": spec.ci_scheme(p),
    }
    value, lo, hi = spec.resolve()(H, p)
    res.update({"kind": spec.kind, spec.value_key: value, "ci_lo": lo, "ci_hi": hi})
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
