"""The mimic stage's tables and chart data: the summary of the stacked cells (accuracy
retained, parameter and latency reductions), its markdown, the trade-off chart's long rows,
and one cell's training curves as a frame."""

from __future__ import annotations

import pandas as pd

from workflow_scripts.core.retained import meets_with_confidence
from workflow_scripts.core.tables import markdown_table
from workflow_scripts.mimic.plan import KINDS, NO_MIMIC, cell_name

SUMMARY_COLUMNS = [
    "model", "mimicker", "kind", "depth", "target_layers", "accuracy", "ci_lo", "ci_hi",
    "eval_clips", "backbone_accuracy", "accuracy_retained_pct", "retained_lo_pct",
    "retained_hi_pct", "meets_threshold", "meets_with_confidence", "stack_params",
    "mimicker_params", "stack_param_reduction_pct", "model_params", "mimicked_model_params",
    "model_param_reduction_pct", "stack_ms", "mimicker_ms", "stack_latency_reduction_pct",
    "stack_speedup", "stack_speedup_lo", "stack_speedup_hi", "model_ms", "mimicked_model_ms",
    "model_latency_reduction_pct", "speedup", "speedup_lo", "speedup_hi", "latency_batch_size",
    "timing_precision", "device",
]  # fmt: skip


def _pct_reduction(original: pd.Series, reduced: pd.Series) -> pd.Series:
    orig = original.astype(float)
    return (100.0 * (1.0 - reduced.astype(float) / orig)).where(orig > 0)


def _order(df: pd.DataFrame) -> pd.Series:
    rank = {k: i for i, k in enumerate((*KINDS, NO_MIMIC))}
    return df.kind.map(rank).fillna(len(rank)) * 100 + df.depth.astype(int)


def summary_table(cells: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """One row per model and mimicker from the stacked cells: test accuracy (with CI), the
    accuracy retained in % of the unpruned backbone's test accuracy and whether it keeps the
    ``threshold`` (``meets_threshold``; the configured ``pruning.threshold``, which the
    overview uses too) on the point estimate, the retained share's paired bootstrap interval
    over clips (``retained_lo_pct``, ``retained_hi_pct``) and whether its lower end keeps the
    threshold (``meets_with_confidence``; False without an interval), the parameter reduction
    of the replaced stack and of the whole model, and the latency reduction of the stack (vs
    the mimicker) and of the full model (vs the mimicked model), all recomputed from the raw
    counts and medians; the speed-ups (``speedup``: full / mimicked model, ``stack_speedup``:
    stack / mimicker) are the cells' interleaved per-round medians with their 95% intervals
    (NaN for cells timed before they existed). Rows: models in order of appearance, then
    linear, transformer, no_mimic, by depth."""
    if cells.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    d = cells.copy()
    d["mimicker"] = [cell_name(k, n) for k, n in zip(d.kind, d.depth, strict=True)]
    d["target_layers"] = [",".join(map(str, t)) for t in d.target_layers]
    d["accuracy_retained_pct"] = 100.0 * d.accuracy / d.backbone_accuracy
    d["meets_threshold"] = d.accuracy / d.backbone_accuracy >= threshold
    lo = d["retained_lo"] if "retained_lo" in d else pd.Series(float("nan"), index=d.index)
    hi = d["retained_hi"] if "retained_hi" in d else pd.Series(float("nan"), index=d.index)
    d["retained_lo_pct"], d["retained_hi_pct"] = 100.0 * lo, 100.0 * hi
    d["meets_with_confidence"] = meets_with_confidence(lo.astype(float), threshold)
    d["latency_batch_size"] = d.batch_size  # cost_report's timing batch
    d["stack_param_reduction_pct"] = _pct_reduction(d.stack_params, d.mimicker_params)
    d["model_param_reduction_pct"] = _pct_reduction(d.model_params, d.mimicked_model_params)
    d["stack_latency_reduction_pct"] = _pct_reduction(d.stack_ms, d.mimicker_ms)
    d["model_latency_reduction_pct"] = _pct_reduction(d.model_ms, d.mimicked_model_ms)
    models = list(dict.fromkeys(d.model))
    d["_m"] = d.model.map({m: i for i, m in enumerate(models)})
    d["_k"] = _order(d)
    d = d.sort_values(["_m", "_k"], kind="stable").reset_index(drop=True)
    return d.reindex(columns=SUMMARY_COLUMNS)


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it (``mimic_summary.{csv,md}``): accuracies in percent
    (``_pct``), each parameter share naming its denominator (``stack_`` = the replaced
    transformer stack, ``whole_model_`` = the whole classifier), ``target_layers`` as the
    states the mimicker predicts (ℓ = the output of layer ℓ)."""
    from workflow_scripts.core.tables import percent_columns

    d = summary.rename(columns={
        "model_param_reduction_pct": "whole_model_param_reduction_pct",
        "model_params": "whole_model_params",
        "mimicked_model_params": "mimicked_whole_model_params",
        "target_layers": "target_states"})  # fmt: skip
    return percent_columns(d)


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary (:func:`summary_display`) as a markdown table, floats with two decimals."""
    return markdown_table(summary_display(summary), floatfmt=".2f")


def tradeoff_long(summary: pd.DataFrame) -> pd.DataFrame:
    """Long rows (one per cell and cost axis) for the trade-off chart: accuracy retained vs
    the stack's parameter reduction, the stack's latency reduction and the full model's."""
    axes = {
        "stack_param_reduction_pct": "parameters: stack vs mimicker",
        "stack_latency_reduction_pct": "latency: stack vs mimicker",
        "model_latency_reduction_pct": "latency: full vs mimicked model",
    }
    keep = ["model", "mimicker", "kind", "depth", "accuracy_retained_pct", "target_layers"]
    out = summary.melt(
        id_vars=keep, value_vars=list(axes), var_name="cost", value_name="reduction_pct"
    )
    out["cost"] = out.cost.map(axes)
    return out


CURVE_COLUMNS = ["stage", "epoch", "train_loss", "val_loss", "val_accuracy", "best"]


def curves_frame(model: str, kind: str, depth: int, curves: list[dict]) -> pd.DataFrame:
    """One cell's training curves (a cell output): one row per stage and epoch (``curves``:
    the stages' history entries with ``stage`` and ``best`` added), with model, kind and depth
    in front and ``val_loss_per_target`` last (stage 1 only; an empty list in stage 2)."""
    df = pd.DataFrame(curves, columns=[*CURVE_COLUMNS, "val_loss_per_target"])
    df.insert(0, "model", model)
    df.insert(1, "kind", kind)
    df.insert(2, "depth", depth)
    df["val_loss_per_target"] = [v if isinstance(v, list) else [] for v in df.val_loss_per_target]
    df["stage"] = df.stage.astype("int64")
    df["epoch"] = df.epoch.astype("int64")
    df["best"] = df.best.astype(bool)
    return df
