"""The SpeechLLM stage's tables and charts (torch-free): the pruning summary (largest fraction
of decoder layers removed within the relative-degradation threshold), the block-overlap table
(which contiguous block of n decoder layers the angular distance calls redundant, per
SpeechLLM x task x input type, and the Jaccard overlap of those blocks between pairs that
differ in encoder, task or input type), the decoder-similarity heatmaps and the ΔWER curves.
The markdown is :func:`workflow_scripts.core.tables.markdown_table`."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from workflow_scripts.pruning.strategies import STRATEGIES
from workflow_scripts.speechllm.metrics import relative_degradation


def add_degradation(df: pd.DataFrame, threshold: float, floor: float) -> pd.DataFrame:
    """The pruning table with the paper's ``delta_wer`` = WER / WER_0 (null when WER_0 = 0),
    ``relative_degradation`` = (WER - WER_0) / max(WER_0, floor), ``within_threshold`` (<=
    ``threshold``) and the relative degradation of the healed WER."""
    d = df.copy()
    d["delta_wer"] = (d.wer / d.base_wer).where(d.base_wer > 0)
    d["relative_degradation"] = relative_degradation(d.wer, d.base_wer, floor)
    d["within_threshold"] = d.relative_degradation <= threshold
    d["healed_relative_degradation"] = relative_degradation(d.healed_wer, d.base_wer, floor)
    return d


def mean_over_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Seeded strategies' rows replaced by their mean over seeds per n (``seed`` null,
    ``removed`` null); other rows unchanged."""
    seeded = df.seed.notna()
    if not seeded.any():
        return df
    keys = ["model", "task", "strategy", "n_removed"]
    num = ["wer", "bleu", "ser", "healed_wer", "healed_bleu", "decoder_params"]
    g = df[seeded].groupby(keys, sort=False)
    mean = g[num].mean().reset_index()
    first = g.first().reset_index().drop(columns=num)
    merged = first.merge(mean, on=keys).assign(seed=pd.NA, removed=None)
    return pd.concat([df[~seeded], merged[df.columns]], ignore_index=True)


def summary_table(df: pd.DataFrame, threshold: float, floor: float) -> pd.DataFrame:
    """Per SpeechLLM, task and strategy (random: mean over seeds): the unpruned WER and BLEU,
    ``max_removed`` = the largest n whose relative degradation is <= ``threshold`` and its
    fraction of the L decoder layers, ``max_removed_prefix`` (every n' <= n within), the
    removed blocks there, and the healed WER at each healed n."""
    d = add_degradation(mean_over_seeds(df), threshold, floor)
    out = []
    for (model, task, strategy), g in d.groupby(["model", "task", "strategy"], sort=False):
        g = g.sort_values("n_removed")
        ok = g.within_threshold.to_numpy() | (g.n_removed.to_numpy() == 0)
        n = g.n_removed.to_numpy(int)
        best, prefix = int(n[ok].max()), int(n[np.cumprod(ok).astype(bool)].max())
        at = g[g.n_removed == best].iloc[0]
        healed = g[g.healed.astype(bool)]
        out.append({
            "model": model, "task": task, "strategy": strategy, "n_layers": int(at.n_layers),
            "base_wer": float(at.base_wer), "base_bleu": float(at.base_bleu),
            "threshold": threshold, "max_removed": best,
            "max_removed_fraction": best / int(at.n_layers), "max_removed_prefix": prefix,
            "wer_at_max": float(at.wer), "removed_at_max": at.removed,
            "healed_n": ",".join(map(str, healed.n_removed)) or None,
            "wer_before_heal": ",".join(f"{w:.4f}" for w in healed.wer) or None,
            "wer_after_heal": ",".join(f"{w:.4f}" for w in healed.healed_wer) or None,
        })  # fmt: skip
    res = pd.DataFrame(out)
    if res.empty:
        return res
    order = {s: i for i, s in enumerate(STRATEGIES)}
    res["_o"] = res.strategy.map(order)
    return res.sort_values(["model", "task", "_o"]).drop(columns="_o").reset_index(drop=True)


def redundant_blocks(sim: pd.DataFrame) -> pd.DataFrame:
    """Per SpeechLLM, task, input type and n: the contiguous block l*..l*+n-1 with the smallest
    angular distance d(h_l*, h_l*+n) (lowest l* on ties), i.e. what ``angular_block`` removes."""
    a = sim[sim.metric == "angular"]
    rows = []
    for (model, task, inp, n), g in a.groupby(["model", "task", "input", "n"], sort=False):
        g = g.sort_values("layer")
        best = g.iloc[int(np.argmin(g.value.to_numpy()))]
        start = int(best.layer)
        rows.append({"model": model, "task": task, "input": inp, "n": int(n), "start": start,
                     "blocks": list(range(start, start + int(n))), "distance": float(best.value),
                     "n_layers": int(best.n_layers)})  # fmt: skip
    return pd.DataFrame(rows)


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def overlap_pairs(blocks: pd.DataFrame, encoders: dict[str, str] | None = None) -> pd.DataFrame:
    """Every pair of (SpeechLLM, task, input) block choices at the same n that differ in exactly
    one factor (``encoder``: the SpeechLLMs, ``task``, ``input``), with the Jaccard overlap of
    their blocks."""
    rows = []
    for n, g in blocks.groupby("n", sort=True):
        recs = g.to_dict("records")
        for x, y in itertools.combinations(recs, 2):
            diff = [k for k in ("model", "task", "input") if x[k] != y[k]]
            if len(diff) != 1:
                continue
            factor = "encoder" if diff[0] == "model" else diff[0]
            rows.append(
                {
                    "n": int(n),
                    "factor": factor,
                    "a": f"{x['model']}/{x['task']}/{x['input']}",
                    "b": f"{y['model']}/{y['task']}/{y['input']}",
                    "blocks_a": x["blocks"],
                    "blocks_b": y["blocks"],
                    "jaccard": _jaccard(x["blocks"], y["blocks"]),
                }
            )
    return pd.DataFrame(rows)


def overlap_table(blocks: pd.DataFrame, n: int) -> pd.DataFrame:
    """The headline table at ``n``: one row per SpeechLLM x task x input type with its
    redundant block, plus one row per factor (encoder, task, input) with the mean Jaccard
    overlap of the pairs differing in it and the share of pairs choosing the same block."""
    at = blocks[blocks.n == n]
    rows = [{"model": r.model, "task": r.task, "input": r.input, "n": n, "blocks": r.blocks,
             "distance": r.distance} for r in at.itertuples()]  # fmt: skip
    pairs = overlap_pairs(at)
    for factor in ("encoder", "task", "input"):
        p = pairs[pairs.factor == factor] if len(pairs) else pairs
        if len(p):
            rows.append(
                {
                    "model": f"across {factor}",
                    "task": "",
                    "input": "",
                    "n": n,
                    "mean_jaccard": float(p.jaccard.mean()),
                    "identical_share": float((p.jaccard == 1.0).mean()),
                    "pairs": len(p),
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# Charts
# ----------------------------------------------------------------------------------------
def similarity_heatmaps(sim: pd.DataFrame):
    """Angular distance d(h_l, h_l+n) as a heatmap of layer l (x) vs n (y), one panel per
    SpeechLLM (rows) and task / input type (columns), as the paper's Figure 1."""
    import altair as alt

    d = sim[sim.metric == "angular"].copy()
    d["panel"] = d.task + " / " + d.input
    return (
        alt.Chart(d)
        .mark_rect()
        .encode(
            x=alt.X("layer:O", title="layer l"),
            y=alt.Y("n:O", title="n", sort="descending"),
            color=alt.Color(
                "value:Q", scale=alt.Scale(scheme="viridis", reverse=True), title="d(l, l+n)"
            ),  # fmt: skip
            tooltip=["model", "panel", "layer", "n", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=140, height=140)
        .facet(row=alt.Row("model:N"), column=alt.Column("panel:N", title=None))
    )


def delta_wer_chart(df: pd.DataFrame, threshold: float, floor: float):
    """Relative WER degradation vs the fraction of decoder layers removed, one line per
    strategy (random: mean over seeds), panels = SpeechLLM (rows) x task (columns); the dashed
    rule is the threshold, triangles are healed models."""
    import altair as alt

    d = add_degradation(mean_over_seeds(df), threshold, floor)
    d = d[["model", "task", "strategy", "fraction_removed", "n_removed", "wer",
           "relative_degradation", "healed", "healed_relative_degradation"]]  # fmt: skip
    base = alt.Chart().encode(
        x=alt.X("fraction_removed:Q", title="fraction of decoder layers removed")
    )
    lines = base.mark_line(point=True).encode(
        y=alt.Y("relative_degradation:Q", title="relative WER degradation"),
        color="strategy:N", tooltip=["strategy", "n_removed", alt.Tooltip("wer:Q", format=".3f")],
    )  # fmt: skip
    healed = base.mark_point(shape="triangle-up", size=80, filled=True).encode(
        y="healed_relative_degradation:Q", color="strategy:N",
    ).transform_filter(alt.datum.healed)  # fmt: skip
    rule = (
        alt.Chart()
        .mark_rule(strokeDash=[4, 4], color="grey")
        .encode(y="t:Q")
        .transform_calculate(t=str(threshold))
    )
    return (
        alt.layer(lines, healed, rule, data=d)
        .properties(width=220, height=160)
        .facet(row=alt.Row("model:N"), column=alt.Column("task:N"))
    )


# ----------------------------------------------------------------------------------------
# Everything the tables rule writes
# ----------------------------------------------------------------------------------------
def build_tables(sim: pd.DataFrame, pruning: pd.DataFrame, threshold: float, floor: float,
                 overlap_n: int) -> dict[str, pd.DataFrame]:  # fmt: skip
    """The pruning ``summary``, the block-``overlap`` table at ``overlap_n`` and every
    overlap pair (``pairs``, all n) of the stacked cells."""
    blocks = redundant_blocks(sim) if len(sim) else pd.DataFrame()
    return {
        "summary": summary_table(pruning, threshold, floor) if len(pruning) else pd.DataFrame(),
        "overlap": overlap_table(blocks, overlap_n) if len(blocks) else pd.DataFrame(),
        "pairs": overlap_pairs(blocks) if len(blocks) else pd.DataFrame(),
    }


def charts(sim: pd.DataFrame, pruning: pd.DataFrame, threshold: float, floor: float) -> dict:
    """The decoder-similarity heatmaps and the ΔWER curves (role -> altair chart)."""
    return {"similarity": similarity_heatmaps(sim),
            "delta_wer": delta_wer_chart(pruning, threshold, floor)}  # fmt: skip
