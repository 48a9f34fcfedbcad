"""Altair charts of the aggregated tables, saved as offline HTML (inline JS) and PNG."""

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
            {"model": b.model, "panel": _panel(b.metric, knn_k), "layer_j": b.first_layer,
             "layer_i": b.first_layer, "kind": "boundary"}
        )  # fmt: skip
    data = pd.concat(
        [d[["model", "panel", "layer_i", "layer_j", "similarity", "value", "kind"]], b],
        ignore_index=True,
    )
    base = alt.Chart().encode(
        x=alt.X("layer_j:O", title="layer"),
        y=alt.Y("layer_i:O", title="layer", sort="descending"),
    )
    heat = (
        base.mark_rect()
        .encode(
            color=alt.Color(
                "similarity:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="sim."
            ),
            tooltip=["model", "panel", "layer_i", "layer_j", alt.Tooltip("value:Q", format=".3f")],
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
