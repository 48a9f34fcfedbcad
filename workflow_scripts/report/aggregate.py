"""The baseline table (``rules/aggregate.smk``): every model's fine-tuned accuracy on the
validation and test splits, with parameter counts (``results/tables/baseline.*`` + chart).
The overview is :mod:`workflow_scripts.report.overview`, the Pareto table
:mod:`workflow_scripts.report.pareto`. Importing this module imports neither torch nor altair.
"""

from __future__ import annotations

import pandas as pd

BASELINE_COLUMNS = [
    "model", "split", "accuracy", "ci_lo", "ci_hi", "n", "num_layers", "params_total",
    "params_transformer", "params_feature_encoder", "params_head", "finetune_steps",
    "finetune_seconds", "device",
]  # fmt: skip


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------
def baseline_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per model and evaluation split (the baseline cells stacked), the columns of
    :data:`BASELINE_COLUMNS` that the cells have, models in order of appearance."""
    if cells.empty:
        return pd.DataFrame(columns=BASELINE_COLUMNS)
    cols = [c for c in BASELINE_COLUMNS if c in cells.columns]
    d = cells[cols].copy()
    order = {m: i for i, m in enumerate(dict.fromkeys(d.model))}
    d["_m"] = d.model.map(order)
    return d.sort_values(["_m", "split"], kind="stable").drop(columns="_m").reset_index(drop=True)


def baseline_display(table: pd.DataFrame) -> pd.DataFrame:
    """The baseline table as people read it (``baseline.{csv,md}``): accuracies and their CI
    in percent (``_pct``); ``params_transformer`` is the transformer stack's parameters,
    ``params_total`` the whole classifier's."""
    from workflow_scripts.core.tables import percent_columns

    return percent_columns(table)


# ----------------------------------------------------------------------------------------
# charts
# ----------------------------------------------------------------------------------------
def baseline_chart(table: pd.DataFrame):
    """Accuracy (%) with its 95% CI per model, one panel per split."""
    import altair as alt

    from workflow_scripts.core.tables import percent_columns

    d = percent_columns(table, ["accuracy", "ci_lo", "ci_hi"])
    base = alt.Chart(d).encode(y=alt.Y("model:N", title=None))
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("accuracy_pct:Q", title="accuracy (%, 95% CI)", scale=alt.Scale(domain=[0, 100])),
        tooltip=[
            "model",
            "split",
            alt.Tooltip("accuracy_pct:Q", title="accuracy (%)", format=".1f"),
            alt.Tooltip("ci_lo_pct:Q", title="95% CI low (%)", format=".1f"),
            alt.Tooltip("ci_hi_pct:Q", title="95% CI high (%)", format=".1f"),
            "n",
        ],  # fmt: skip
    )
    bars = base.mark_rule().encode(x=alt.X("ci_lo_pct:Q", title="accuracy (%, 95% CI)"),
                                   x2="ci_hi_pct:Q")  # fmt: skip
    return (
        alt.layer(bars, points)
        .properties(width=300, height=alt.Step(24))
        .facet(row=alt.Row("split:N", title=None))
    )
