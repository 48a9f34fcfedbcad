"""Aggregation across stages (``rules/aggregate.smk``): the baseline table and the overview.

The per-stage tables (``results/tables/{similarity,pruning,mimic,structured}.parquet`` with
their summaries and charts) are built by each stage's own aggregation rule; this module adds

* ``results/tables/baseline.parquet`` (+ ``.csv``, ``.md``, chart): every model's fine-tuned
  accuracy on the validation and test splits, with parameter counts;
* ``results/tables/overview.{md,csv,parquet}`` (+ chart): the paper's headline questions side
  by side, one row per model - the detected blocks per similarity metric, the largest number
  of blocks each pruning strategy removes while keeping >= the threshold (95%) of the
  unpruned accuracy, and the best mimicker's accuracy retained, parameter reduction and
  latency reduction. Every number is computed here from the aggregated tables.

Only the stages listed in ``config.outputs`` enter the overview (a disabled or not yet
written stage is left out). Importing this module imports neither torch nor altair.
"""

from __future__ import annotations

import math

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


def _spans(rows: pd.DataFrame) -> str:
    """'0-2 3-5' for blocks with first/last layers (hidden-state indices)."""
    rows = rows.sort_values("block")
    return " ".join(
        f"{int(a)}-{int(b)}" for a, b in zip(rows.first_layer, rows.last_layer, strict=True)
    )


def _pruning_headline(pruning: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """(model, strategy, max_removed, n_layers): one row per model and strategy - the mean
    over seeds for ``random`` - from :func:`pruning.report.summary_table`."""
    from workflow_scripts.pruning.report import summary_table

    s = summary_table(pruning, threshold)
    if s.empty:
        return s
    return s[s.seed.isna()][["model", "strategy", "max_removed", "n_layers"]]


def best_mimickers(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model the mimicker (no_mimic excluded) with the highest accuracy retained, ties
    broken by the larger whole-model parameter reduction (from the mimic summary table)."""
    d = summary[summary.kind != "no_mimic"]
    if d.empty:
        return d
    d = d.sort_values(
        ["accuracy_retained_pct", "model_param_reduction_pct"], ascending=False, kind="stable"
    )
    return d.groupby("model", sort=False).head(1)


def _structured_headline(structured: pd.DataFrame, threshold: float) -> dict[str, dict]:
    """Per model the highest (achieved) sparsity among the cells keeping >= ``threshold`` of
    the accuracy (``retained``), when the structured table has those columns."""
    cols = ("achieved_sparsity", "target_sparsity", "sparsity")
    sparsity = next((c for c in cols if c in structured), None)
    rel = next((c for c in ("retained", "relative_accuracy") if c in structured), None)
    if sparsity is None or rel is None or "model" not in structured:
        return {}
    out = {}
    for model, g in structured.groupby("model", sort=False):
        ok = g[g[rel] >= threshold]
        best = float(ok[sparsity].max()) if len(ok) else math.nan
        out[model] = {"structured: max sparsity": best}
    return out


def overview_table(
    baseline: pd.DataFrame,
    blocks: pd.DataFrame | None = None,
    pruning: pd.DataFrame | None = None,
    mimic: pd.DataFrame | None = None,
    structured: pd.DataFrame | None = None,
    threshold: float = 0.95,
) -> pd.DataFrame:
    """One row per model (order of the baseline table): test accuracy and depth, then for
    each table given - ``blocks: <metric>`` (the detected blocks as first-last layer spans),
    ``prunable: <strategy>`` (largest n removed keeping >= ``threshold`` of the accuracy),
    ``best mimicker`` with its accuracy retained and parameter/latency reductions (%)."""
    test = baseline[baseline.split == "testing"]
    models = list(dict.fromkeys(test.model)) or list(dict.fromkeys(baseline.model))
    rows = {m: {"model": m} for m in models}
    for m in models:
        r = test[test.model == m]
        rows[m]["test accuracy"] = float(r.accuracy.iloc[0]) if len(r) else math.nan
        r = baseline[baseline.model == m]
        rows[m]["layers"] = int(r.num_layers.iloc[0]) if "num_layers" in r and len(r) else None
    if blocks is not None and len(blocks):
        for (m, metric), g in blocks.groupby(["model", "metric"], sort=True):
            if m in rows:
                rows[m][f"blocks: {metric}"] = _spans(g)
    if pruning is not None and len(pruning):
        for r in _pruning_headline(pruning, threshold).itertuples(index=False):
            if r.model in rows:
                rows[r.model][f"prunable: {r.strategy}"] = int(r.max_removed)
    if mimic is not None and len(mimic):
        from workflow_scripts.mimic.report import summary_table

        for r in best_mimickers(summary_table(mimic)).itertuples(index=False):
            if r.model in rows:
                rows[r.model].update(
                    {
                        "best mimicker": r.mimicker,
                        "mimic: accuracy retained %": float(r.accuracy_retained_pct),
                        "mimic: param reduction %": float(r.model_param_reduction_pct),
                        "mimic: latency reduction %": float(r.model_latency_reduction_pct),
                    }
                )
    if structured is not None and len(structured):
        for m, vals in _structured_headline(structured, threshold).items():
            if m in rows:
                rows[m].update(vals)
    return pd.DataFrame(list(rows.values()))


def overview_markdown(overview: pd.DataFrame, threshold: float, stages: list[str]) -> str:
    """The overview as a markdown document: the table and what each column means."""
    from workflow_scripts.core.tables import markdown_table

    pct = f"{100 * threshold:g}%"
    notes = ["- `test accuracy`: the fine-tuned model on the test split; `layers`: blocks."]
    if "similarity" in stages:
        notes.append(
            "- `blocks: <metric>`: contiguous blocks of similar layers detected on that "
            "metric's layer x layer matrix, as first-last hidden-state indices."
        )
    if "pruning" in stages:
        notes.append(
            f"- `prunable: <strategy>`: the most blocks that strategy removes (no retraining) "
            f"while keeping >= {pct} of the unpruned test accuracy (random: mean over seeds)."
        )
    if "mimic" in stages:
        notes.append(
            "- `best mimicker`: the mimicker with the highest test accuracy retained (% of the "
            "fine-tuned model's); parameter and latency reductions are of the whole model."
        )
    if "structured" in stages:
        notes.append(f"- `structured: max sparsity`: highest sparsity keeping >= {pct}.")
    return (
        "# Overview\n\nOne row per model; generated from the aggregated tables "
        f"(stages: {', '.join(stages) or 'baseline only'}).\n\n"
        + markdown_table(overview)
        + "\n"
        + "\n".join(notes)
        + "\n"
    )


# ----------------------------------------------------------------------------------------
# charts
# ----------------------------------------------------------------------------------------
def baseline_chart(table: pd.DataFrame):
    """Accuracy with its 95% CI per model, one panel per split."""
    import altair as alt

    base = alt.Chart(table).encode(y=alt.Y("model:N", title=None))
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        tooltip=["model", "split", alt.Tooltip("accuracy:Q", format=".3f"), "n"],
    )
    bars = base.mark_rule().encode(x="ci_lo:Q", x2="ci_hi:Q")
    return (
        alt.layer(bars, points)
        .properties(width=300, height=alt.Step(24))
        .facet(row=alt.Row("split:N", title=None))
    )


def overview_long(overview: pd.DataFrame) -> pd.DataFrame:
    """Long rows (model, question, measure, value) of the overview's numeric answers."""
    groups = {"prunable: ": "blocks prunable", "mimic: ": "best mimicker (%)"}
    rows = []
    for col in overview.columns:
        for prefix, question in groups.items():
            if col.startswith(prefix):
                for m, v in zip(overview.model, overview[col], strict=True):
                    if pd.notna(v):
                        measure = col.removeprefix(prefix)
                        rows.append(
                            {"model": m, "question": question, "measure": measure, "value": v}
                        )
    return pd.DataFrame(rows, columns=["model", "question", "measure", "value"])


def overview_chart(overview: pd.DataFrame):
    """Bars per model: blocks each pruning strategy removes at the threshold, and the best
    mimicker's accuracy retained / parameter / latency reduction; one panel per question."""
    import altair as alt

    long = overview_long(overview)
    if long.empty:  # baseline only: the test accuracy
        acc = overview["test accuracy"]
        long = pd.DataFrame(
            {"model": overview.model, "question": "test accuracy", "measure": "accuracy",
             "value": acc}
        )  # fmt: skip
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("value:Q", title=None),
            y=alt.Y("measure:N", title=None),
            yOffset="model:N",
            color="model:N",
            tooltip=["model", "question", "measure", alt.Tooltip("value:Q", format=".3g")],
        )
        .properties(width=300)
        .facet(row=alt.Row("question:N", title=None))
        .resolve_scale(x="independent", y="independent")
    )
