"""Altair charts of the aggregated tables, saved as offline HTML (inline JS) and PNG.

What a reader sees follows the tables' conventions: accuracies, retained shares and parameter
cuts in percent on every axis and tooltip (the charts' data columns ``*_pct``,
:func:`~workflow_scripts.core.tables.percent_columns`), layers numbered 1..L."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def save_chart(chart, html: str | os.PathLike, png: str | os.PathLike | None = None) -> None:
    """Write ``chart`` as self-contained HTML (works offline) and optionally PNG (vl-convert),
    each atomically."""
    for path, kwargs in ((html, {"inline": True}), (png, {"scale_factor": 1.5})):
        if path is None:
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        chart.save(str(tmp), **kwargs)
        os.replace(tmp, path)


def _panel(metric: pd.Series, knn_k: int) -> pd.Series:
    return metric.where(metric != "mutual_knn", f"mutual_knn (k={knn_k})")


def similarity_heatmaps(sim: pd.DataFrame, blocks: pd.DataFrame, knn_k: int):
    """Layer x layer heatmaps: rows = models, columns = metrics, one shared colour scale in
    which brighter = more similar (angular distance shown as 1 - d), and a red rule through
    the first layer of every detected block after the first. ``sim`` is the aggregated
    similarity table; only matrix metrics are drawn."""
    import altair as alt

    d = sim[sim.metric != "block_influence"].copy()
    d = d[(d.metric != "mutual_knn") | (d.k == knn_k)]
    d["similarity"] = d.value.where(d.higher_is_similar, 1 - d.value)
    d["panel"] = _panel(d.metric, knn_k)
    d["kind"] = "cell"
    b = blocks[blocks.block > 0].copy() if len(blocks) else pd.DataFrame()
    if len(b):
        b = pd.DataFrame(
            {"model": b.model, "panel": _panel(b.metric, knn_k), "layer_j": b.first_state,
             "layer_i": b.first_state, "kind": "boundary"}
        )  # fmt: skip
    data = pd.concat(
        [d[["model", "panel", "layer_i", "layer_j", "similarity", "value", "kind"]], b],
        ignore_index=True,
    )
    base = alt.Chart().encode(
        x=alt.X("layer_j:O", title="state (0 = input, ℓ = output of layer ℓ)"),
        y=alt.Y("layer_i:O", title="state", sort="descending"),
    )
    heat = (
        base.mark_rect()
        .encode(
            color=alt.Color(
                "similarity:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="sim."
            ),
            tooltip=[
                "model",
                "panel",
                alt.Tooltip("layer_i:O", title="state i (0 = input)"),
                alt.Tooltip("layer_j:O", title="state j"),
                alt.Tooltip("value:Q", format=".3f"),
            ],  # fmt: skip
        )
        .transform_filter(alt.datum.kind == "cell")
    )
    vrule = (
        alt.Chart()
        .mark_rule(color="red", strokeWidth=2)
        .encode(x=alt.X("layer_j:O"))
        .transform_filter(alt.datum.kind == "boundary")
    )
    hrule = (
        alt.Chart()
        .mark_rule(color="red", strokeWidth=2)
        .encode(y=alt.Y("layer_i:O", sort="descending"))
        .transform_filter(alt.datum.kind == "boundary")
    )
    return (
        alt.layer(heat, vrule, hrule, data=data)
        .properties(width=150, height=150)
        .facet(row=alt.Row("model:N"), column=alt.Column("panel:N", title=None))
        .resolve_scale(x="independent", y="independent")
    )


def mimic_tradeoff_chart(long: pd.DataFrame, threshold: float = 0.95):
    """Accuracy retained (% of the backbone) vs cost reduction (%), one point per mimic cell,
    rows = models, columns = cost axes; ``long`` from ``mimic.report.tradeoff_long``. A dashed
    line marks the ``threshold`` (as a share of the backbone's accuracy)."""
    import altair as alt

    points = alt.Chart().mark_point(filled=True, size=90).encode(
        x=alt.X("reduction_pct:Q", title="reduction (%)",
                scale=alt.Scale(zero=False, padding=12)),
        y=alt.Y("accuracy_retained_pct:Q", title="accuracy retained (%)",
                scale=alt.Scale(zero=False, padding=12)),
        color=alt.Color("mimicker:N", title="mimicker"),
        shape=alt.Shape("kind:N", title="type"),
        tooltip=["model", "mimicker", "target_layers", "cost",
                 alt.Tooltip("reduction_pct:Q", format=".1f"),
                 alt.Tooltip("accuracy_retained_pct:Q", format=".1f")],
    )  # fmt: skip
    costs = list(dict.fromkeys(long.cost))
    rule = alt.Chart().mark_rule(color="gray", strokeDash=[4, 4])
    line = rule.encode(y=alt.datum(100 * threshold))
    return (
        alt.layer(points, line, data=long)
        .properties(width=180, height=160)
        .facet(row=alt.Row("model:N"), column=alt.Column("cost:N", title=None, sort=costs))
        .resolve_scale(x="independent")
    )


def mimic_curves_chart(curves: pd.DataFrame):
    """Per-epoch training (dashed) and validation (solid) loss of every mimic cell, colour =
    mimicker, rows = models, columns = stage 1 (MSE) / stage 2 (NLL)."""
    import altair as alt

    d = curves[["model", "kind", "depth", "stage", "epoch", "train_loss", "val_loss"]].copy()
    d["mimicker"] = d.kind + "-" + d.depth.astype(str)
    d["stage"] = d.stage.map({1: "stage 1: MSE to teacher", 2: "stage 2: NLL"})
    d = d.melt(
        id_vars=["model", "mimicker", "stage", "epoch"],
        value_vars=["train_loss", "val_loss"],
        var_name="split",
        value_name="loss",
    )
    d["split"] = d.split.map({"train_loss": "training", "val_loss": "validation"})
    return (
        alt.Chart(d)
        .mark_line(point=alt.OverlayMarkDef(size=12))
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("loss:Q", title="loss", scale=alt.Scale(zero=False)),
            color=alt.Color("mimicker:N"),
            strokeDash=alt.StrokeDash("split:N", sort=["validation", "training"], legend=None),
            tooltip=[
                "model",
                "mimicker",
                "stage",
                "split",
                "epoch",
                alt.Tooltip("loss:Q", format=".4f"),
            ],
        )
        .properties(width=220, height=150)
        .facet(row=alt.Row("model:N"), column=alt.Column("stage:N", title=None))
        .resolve_scale(x="independent", y="independent")
        .properties(
            title=alt.TitleParams(
                "Mimicker training curves", subtitle="solid: validation loss, dashed: training loss"
            )
        )
    )


# ----------------------------------------------------------------------------------------
# Layer pruning (rules/pruning.smk)
# ----------------------------------------------------------------------------------------
def _pruning_curves(df: pd.DataFrame) -> pd.DataFrame:
    """The curve rows of the aggregated pruning table (deterministic strategies and the mean over
    random seeds; per-seed random rows dropped), with JSON-safe columns for charts: ``removed``
    names the removed layers 1..L; accuracies, their CI and the relative accuracy in percent
    (``accuracy_pct``, ``ci_lo_pct``, ``relative_accuracy_pct``, ...)."""
    from workflow_scripts.core.tables import layer_text, percent_columns

    d = df[df["seed"].isna()].copy()
    d["removed"] = ["mean over seeds" if r is None else layer_text(r) for r in d["removed"]]
    keep = ["model", "strategy", "n_removed", "n_layers", "removed", "accuracy", "ci_lo",
            "ci_hi", "accuracy_min", "accuracy_max", "relative_accuracy", "base_accuracy",
            "total_params", "latency_ms", "healed_accuracy"]  # fmt: skip
    return percent_columns(d[[c for c in keep if c in d.columns]])


def pruning_accuracy_chart(df: pd.DataFrame, threshold: float = 0.95):
    """Test accuracy (%) vs number of removed blocks: one line per strategy (random = mean over
    seeds with a grey band from the worst to the best seed), one panel per model, a dashed rule at
    ``threshold`` x the unpruned accuracy and triangles for LoRA-healed accuracies."""
    import altair as alt

    d = _pruning_curves(df)
    d["kind"] = "curve"
    rule = d[d.n_removed == 0].drop_duplicates("model")[["model", "base_accuracy_pct"]].copy()
    rule["threshold_accuracy_pct"] = threshold * rule.base_accuracy_pct
    rule["kind"] = "threshold"
    data = pd.concat([d, rule], ignore_index=True)
    x = alt.X("n_removed:Q", title="layers removed", axis=alt.Axis(tickMinStep=1, format="d"))
    color = alt.Color("strategy:N", title="strategy")
    tip = ["model", "strategy", "n_removed",
           alt.Tooltip("removed:N", title="layers removed (1..L)"),
           alt.Tooltip("accuracy_pct:Q", title="test accuracy (%)", format=".1f"),
           alt.Tooltip("ci_lo_pct:Q", title="95% CI low (%)", format=".1f"),
           alt.Tooltip("ci_hi_pct:Q", title="95% CI high (%)", format=".1f"),
           alt.Tooltip("relative_accuracy_pct:Q", title="retained (% of unpruned)",
                       format=".1f")]  # fmt: skip
    curve = alt.Chart().transform_filter(alt.datum.kind == "curve")
    line = curve.mark_line(point=True).encode(
        x=x, y=alt.Y("accuracy_pct:Q", title="test accuracy (%)"), color=color, tooltip=tip
    )
    band = (
        curve.mark_area(opacity=0.15)
        .encode(
            x=x,
            y=alt.Y("accuracy_min_pct:Q", title="test accuracy (%)"),
            y2="accuracy_max_pct:Q",
            color=alt.value("gray"),
        )  # fmt: skip
        .transform_filter(alt.datum.strategy == "random")
    )
    healed = (
        curve.mark_point(shape="triangle-up", size=80, filled=True)
        .encode(
            x=x,
            y=alt.Y("healed_accuracy_pct:Q", title="test accuracy (%)"),
            color=color,
            tooltip=[
                "strategy",
                "n_removed",
                alt.Tooltip("healed_accuracy_pct:Q", title="healed accuracy (%)", format=".1f"),
            ],
        )  # fmt: skip
        .transform_filter("isValid(datum.healed_accuracy_pct)")
    )
    thr = (
        alt.Chart()
        .mark_rule(strokeDash=[4, 4], color="black")
        .encode(
            y=alt.Y("threshold_accuracy_pct:Q", title="test accuracy (%)"),
            tooltip=[alt.Tooltip("threshold_accuracy_pct:Q", title="threshold (%)", format=".1f")],
        )  # fmt: skip
        .transform_filter(alt.datum.kind == "threshold")
    )
    return (
        alt.layer(band, line, healed, thr, data=data)
        .properties(width=260, height=200)
        .facet(column=alt.Column("model:N", title=None))
        .properties(title=f"accuracy vs layers removed (dashed: {threshold:.0%} of unpruned)")
    )


def pruning_latency_chart(df: pd.DataFrame):
    """Test accuracy (%) vs measured latency (median per batch), one line per strategy ordered
    by the number of removed blocks, one panel per model."""
    import altair as alt

    d = _pruning_curves(df)
    d = d[d.latency_ms.notna()] if "latency_ms" in d else d.iloc[:0]
    if d.empty:
        return (
            alt.Chart(pd.DataFrame({"t": ["latency not measured"]})).mark_text().encode(text="t:N")
        )
    return (
        alt.Chart(d)
        .mark_line(point=True)
        .encode(
            x=alt.X("latency_ms:Q", title="latency per batch (ms, median)"),
            y=alt.Y("accuracy_pct:Q", title="test accuracy (%)"),
            color=alt.Color("strategy:N"),
            order="n_removed:Q",
            tooltip=[
                "model",
                "strategy",
                "n_removed",
                alt.Tooltip("removed:N", title="layers removed (1..L)"),
                alt.Tooltip("latency_ms:Q", format=".2f"),
                alt.Tooltip("accuracy_pct:Q", title="test accuracy (%)", format=".1f"),
            ],  # fmt: skip
        )
        .properties(width=260, height=200)
        .facet(column=alt.Column("model:N", title=None))
        .resolve_scale(x="independent")
    )


# ----------------------------------------------------------------------------------------
# Cross-method comparison (rules/structured.smk)
# ----------------------------------------------------------------------------------------
def comparison_chart(long: pd.DataFrame):
    """Test accuracy (%) vs whole-model parameters: structured pruning (points joined in order
    of size), layer pruning (one line per strategy), mimickers (points), the unpruned model (a
    black point); one panel per model. ``long`` from ``structured.report.comparison_long``
    (fractions; shown in percent)."""
    import altair as alt

    from workflow_scripts.core.tables import percent_columns

    d = percent_columns(long, ["accuracy", "retained"])
    tip = ["model", "method", "label", alt.Tooltip("total_params:Q", format=",.0f"),
           alt.Tooltip("accuracy_pct:Q", title="test accuracy (%)", format=".1f"),
           alt.Tooltip("retained_pct:Q", title="retained (% of unpruned)",
                       format=".1f")]  # fmt: skip
    x = alt.X("total_params:Q", title="parameters (whole model)", scale=alt.Scale(zero=False))
    y = alt.Y("accuracy_pct:Q", title="test accuracy (%)")
    color = alt.Color("method:N", title="method")
    base = alt.Chart()
    lines = (
        base.mark_line(point=True)
        .encode(x=x, y=y, color=color, order="total_params:Q", tooltip=tip)
        .transform_filter("datum.family == 'structured' || datum.family == 'layer pruning'")
    )
    mim = (
        base.mark_point(shape="diamond", size=90, filled=True)
        .encode(x=x, y=y, color=color, tooltip=tip)
        .transform_filter(alt.datum.family == "mimicker")
    )
    ref = (
        base.mark_point(size=120, filled=True, color="black")
        .encode(x=x, y=y, tooltip=tip)
        .transform_filter(alt.datum.family == "unpruned")
    )
    return (
        alt.layer(lines, mim, ref, data=d)
        .properties(width=260, height=220)
        .facet(column=alt.Column("model:N", title=None))
        .resolve_scale(x="independent")
        .properties(title="accuracy vs parameters: structured pruning, layer pruning, mimickers")
    )
