"""One similarity cell (``rules/similarity.smk``): a metric on the validation hidden-state
cache, as one long row per layer pair (and per k)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd

from workflow_scripts.backbones.cache import read_layers
from workflow_scripts.similarity.compute import compute_metric, to_long_rows


def run_cell(
    cache_path: str,
    cell: dict,
    log: Callable[[str], None] | None = None,
    model: str | None = None,
) -> pd.DataFrame:
    """The rows of one cell: metric ``cell["metric"]`` with ``cell["params"]``, ``n_boot`` and
    ``seed`` (the slice of :func:`workflow_scripts.similarity.plan.cell_slice`) on the first
    ``cell["clips"]`` utterances of the cache (all when None).

    Columns: ``model`` (first, when ``model`` is given), then those of
    :func:`~workflow_scripts.similarity.compute.to_long_rows` (``k`` as nullable Int64),
    ``n_utterances``, ``higher_is_similar`` and ``params`` (the resolved parameters as JSON).
    """
    H = read_layers(cache_path, limit=cell["clips"])
    if log:
        log(f"layers x utterances x frames x dims: {H.shape}")
    params = {**cell["params"], "n_boot": cell["n_boot"], "seed": cell["seed"]}
    result = compute_metric(cell["metric"], H, params)
    df = pd.DataFrame(to_long_rows(cell["metric"], result))
    if model is not None:
        df.insert(0, "model", model)
    df["k"] = df["k"].astype("Int64")
    df["n_utterances"] = result["n_utterances"]
    df["higher_is_similar"] = result["higher_is_similar"]
    df["params"] = json.dumps(result["params"], sort_keys=True, default=list)
    return df
