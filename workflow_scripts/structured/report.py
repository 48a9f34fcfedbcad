"""The structured-pruning stage's tables: the summary (one row per cell, as CSV and markdown)
and the long table of the cross-method comparison chart (structured pruning vs layer pruning vs
mimickers: test accuracy against whole-model parameters). Torch-free (the report env runs it).
"""

from __future__ import annotations

import math

import pandas as pd

from workflow_scripts.core.retained import meets_with_confidence
from workflow_scripts.core.tables import concat_cells, markdown_table

SUMMARY_COLUMNS = [
    "model", "target_sparsity", "achieved_sparsity", "expected_sparsity", "accuracy",
    "base_accuracy", "retained", "retained_lo", "retained_hi", "meets_threshold",
    "meets_with_confidence", "eval_clips", "finetuned_accuracy", "finetuned_retained",
    "total_params", "base_total_params", "latency_ms", "base_latency_ms", "speedup",
    "speedup_lo", "speedup_hi", "timing_precision", "kept_heads", "kept_ffn_units",
]  # fmt: skip


def summary_table(df: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """One row per cell, models in order of appearance, targets ascending; whether the pruned
    model keeps ``threshold`` of the unpruned accuracy on the point estimate
    (``meets_threshold``) and with confidence (``meets_with_confidence``: the lower end of
    the retained share's paired bootstrap interval ``retained_lo``; False without one)."""
    if df.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    d = df.copy()
    d["meets_threshold"] = d.retained.astype(float) >= threshold
    lo = d["retained_lo"] if "retained_lo" in d else pd.Series(math.nan, index=d.index)
    d["meets_with_confidence"] = meets_with_confidence(lo.astype(float), threshold)
    models = {m: i for i, m in enumerate(dict.fromkeys(d.model))}
    d = d.assign(_m=d.model.map(models)).sort_values(["_m", "target_sparsity"], kind="stable")
    return d[[c for c in SUMMARY_COLUMNS if c in d.columns]].reset_index(drop=True)


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it (``structured.{csv,md}``): accuracies, retained shares
    and sparsities in percent (``_pct``; a sparsity is a share of the transformer stack's
    attention + FFN parameters, hence ``stack_``), the pruned model's size in % of the whole
    unpruned model (``whole_model_params_pct``)."""
    from workflow_scripts.core.tables import percent_columns

    d = summary.rename(columns={f"{k}_sparsity": f"{k}_stack_sparsity"
                                for k in ("target", "achieved", "expected")})  # fmt: skip
    if {"total_params", "base_total_params"} <= set(d.columns):
        share = 100.0 * d.total_params.astype(float) / d.base_total_params.astype(float)
        d.insert(list(d.columns).index("total_params") + 1, "whole_model_params_pct", share)
    return percent_columns(d)


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary (:func:`summary_display`) as a markdown table (floats with 3 significant
    digits, lists space-separated)."""
    return markdown_table(summary_display(summary), ".4g")


def comparison_long(structured: pd.DataFrame, pruning: pd.DataFrame | None = None,
                    mimic: pd.DataFrame | None = None) -> pd.DataFrame:  # fmt: skip
    """Long rows (model, family, method, label, total_params, accuracy, retained) for the
    accuracy-vs-parameters chart. ``family`` is ``structured`` / ``layer pruning`` /
    ``mimicker`` / ``unpruned``; ``method`` names the series (e.g. ``layer pruning:
    backward``). Layer pruning: deterministic strategies and the mean over random seeds (the
    per-seed rows are dropped); mimickers: every cell with its whole mimicked-model size."""
    rows = []
    base_seen = set()
    for r in structured.itertuples(index=False):
        if r.model not in base_seen:
            base_seen.add(r.model)
            rows.append({"model": r.model, "family": "unpruned", "method": "unpruned",
                         "label": "fine-tuned model", "total_params": r.base_total_params,
                         "accuracy": r.base_accuracy, "retained": 1.0})  # fmt: skip
        rows.append({"model": r.model, "family": "structured", "method": "structured",
                     "label": f"target {r.target_sparsity:g}, achieved "
                              f"{r.achieved_sparsity:.3f}",
                     "total_params": r.total_params, "accuracy": r.accuracy,
                     "retained": r.retained})  # fmt: skip
    if pruning is not None and len(pruning):
        p = pruning[pruning["seed"].isna()] if "seed" in pruning else pruning
        for r in p.itertuples(index=False):
            rows.append({"model": r.model, "family": "layer pruning",
                         "method": f"layer pruning: {r.strategy}",
                         "label": f"{r.n_removed} blocks removed",
                         "total_params": r.total_params, "accuracy": r.accuracy,
                         "retained": r.relative_accuracy})  # fmt: skip
    if mimic is not None and len(mimic):
        for r in mimic.itertuples(index=False):
            rows.append({"model": r.model, "family": "mimicker",
                         "method": f"mimicker: {r.kind}-{int(r.depth)}",
                         "label": f"{r.kind}-{int(r.depth)}",
                         "total_params": r.mimicked_model_params, "accuracy": r.accuracy,
                         "retained": r.accuracy / r.backbone_accuracy
                         if r.backbone_accuracy else math.nan})  # fmt: skip
    out = pd.DataFrame(rows, columns=["model", "family", "method", "label", "total_params",
                                      "accuracy", "retained"])  # fmt: skip
    out["total_params"] = out.total_params.astype(float)
    return out


def stage_tables(cell_paths: list[str], others: dict[str, str],
                 threshold: float = 0.95) -> dict[str, pd.DataFrame]:  # fmt: skip
    """Everything the aggregation rule writes, from the cell files and the compared stages'
    tables (``others``: stage -> parquet, those enabled): ``table`` (the stacked cells),
    ``summary`` (:func:`summary_table` at ``threshold``) and ``comparison``
    (:func:`comparison_long`)."""
    df = concat_cells(list(cell_paths))
    frames = {k: pd.read_parquet(p) for k, p in others.items()}
    return {
        "table": df,
        "summary": summary_table(df, threshold),
        "comparison": comparison_long(df, frames.get("pruning"), frames.get("mimic")),
    }
