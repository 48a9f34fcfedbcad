"""The similarity stage's tables: matrices from the long cell rows, detected groups of similar
layers per model and metric (pure functions over DataFrames)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.core.tables import concat_cells
from workflow_scripts.similarity.blocks import detect_blocks


def matrix_of(df: pd.DataFrame) -> np.ndarray:
    """(L, L) matrix from the long rows (layer_i, layer_j, value) of one model/metric/k."""
    n = int(max(df.layer_i.max(), df.layer_j.max())) + 1
    m = np.full((n, n), np.nan)
    m[df.layer_i.to_numpy(), df.layer_j.to_numpy()] = df.value.to_numpy()
    return m


def blocks_table(sim: pd.DataFrame, criterion: str, penalty: float,
                 max_blocks: int | None, knn_k: int) -> pd.DataFrame:  # fmt: skip
    """Detected contiguous groups per model and matrix metric (mutual kNN at ``knn_k``): one
    row per group with its first and last *state* (``first_state``, ``last_state``: state 0 is
    the stack's input, state ℓ the output of layer ℓ = 1..L; ``n_states`` = L + 1) and
    ``states``, the group as the overview names it ('input-5', '6-10')."""
    from workflow_scripts.core.tables import state_name

    rows = []
    mats = sim[sim.metric != "block_influence"]
    mats = mats[(mats.metric != "mutual_knn") | (mats.k == knn_k)]
    for (model, metric), g in mats.groupby(["model", "metric"], sort=True):
        m = matrix_of(g)
        if not g.higher_is_similar.iloc[0]:
            m = 1.0 - m
        seg = detect_blocks(m, max_blocks=max_blocks, criterion=criterion, penalty=penalty)
        for b, (first, last) in enumerate(seg.boundaries):
            rows.append({"model": model, "metric": metric, "n_blocks": seg.n_blocks,
                         "block": b, "states": f"{state_name(first)}-{state_name(last)}",
                         "first_state": first, "last_state": last, "n_states": m.shape[0],
                         "criterion": criterion})  # fmt: skip
    cols = ["model", "metric", "n_blocks", "block", "states", "first_state", "last_state",
            "n_states", "criterion"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def similarity_tables(cell_paths: list[str], detector: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stacked cells and their detected blocks: ``(similarity table, blocks table)``, with
    ``detector`` the block detector's settings (``config.similarity.blocks``: criterion,
    penalty, max_blocks, knn_k)."""
    sim = concat_cells(list(cell_paths))
    d = detector
    return sim, blocks_table(sim, d["criterion"], d["penalty"], d["max_blocks"], d["knn_k"])
