"""One similarity cell (``rules/similarity.smk``): a metric on the validation hidden-state
cache, as one long row per layer pair (and per k)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd

from workflow_scripts.backbones.cachefile import read_layers
from workflow_scripts.similarity.batches import batched_metric
from workflow_scripts.similarity.compute import compute_metric, to_long_rows


def run_cell(
    cache_path: str,
    cell: dict,
    log: Callable[[str], None] | None = None,
    model: str | None = None,
) -> pd.DataFrame:
    """The rows of one cell: metric ``cell["metric"]`` with ``cell["params"]``, ``n_boot`` and
    ``seed`` (the slice of :func:`workflow_scripts.similarity.plan.cell_slice`) on the first
    ``cell["clips"]`` utterances of the cache (all when None), all at once or, with
    ``cell["batch_size"]`` = b, averaged over consecutive batches of b utterances
    (:func:`~workflow_scripts.similarity.batches.batched_metric`).

    Columns: ``model`` (first, when ``model`` is given), then those of
    :func:`~workflow_scripts.similarity.compute.to_long_rows` (``k`` as nullable Int64),
    ``ci_scheme`` (what the row's CI is), ``n_utterances`` (utterances used), ``batch_size``
    (nullable Int64; missing = all at once), ``higher_is_similar`` and ``params`` (the
    resolved parameters as JSON).
    """
    H = read_layers(cache_path, limit=cell["clips"])
    if log:
        log(f"layers x utterances x frames x dims: {H.shape}")
    params = {**cell["params"], "n_boot": cell["n_boot"], "seed": cell["seed"]}
    batch_size = cell.get("batch_size")
    if batch_size is None:
        result = compute_metric(cell["metric"], H, params)
    else:
        result = batched_metric(cell["metric"], H, params, batch_size, log)
        if log:
            log(f"{result['n_batches']} batches of {batch_size} utterances, averaged")
    df = pd.DataFrame(to_long_rows(cell["metric"], result))
    if model is not None:
        df.insert(0, "model", model)
    df["k"] = df["k"].astype("Int64")
    df.insert(df.columns.get_loc("ci_hi") + 1, "ci_scheme", result["ci_scheme"])
    df["n_utterances"] = result["n_utterances"]
    df["batch_size"] = pd.array([batch_size] * len(df), dtype="Int64")
    df["higher_is_similar"] = result["higher_is_similar"]
    df["params"] = json.dumps(result["params"], sort_keys=True, default=list)
    return df
