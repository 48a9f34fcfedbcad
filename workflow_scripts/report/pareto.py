"""Every compressed model of the grid as one point per model: parameters, speed-up and accuracy on
the shared evaluation clips, with the Pareto frontier (fewer parameters, higher accuracy).

Points: the unpruned fine-tuned model, every layer-pruning setting (strategy x layers removed;
``random`` as its mean over seeds), every mimicker and every structured-pruning target.
Written to ``results/tables/pareto.{csv,md}`` by the overview rule; the overview names the
frontier point with the fewest parameters that keeps the threshold.

Both decisions (issue #26, the overview's convention): ``meets_threshold`` on the point
estimate of the retained share, ``meets_with_confidence`` where the lower end of its paired
bootstrap interval over clips keeps the threshold. ``headline`` marks the point the overview's
headline names (:func:`smallest_meeting`: the smallest frontier point meeting the threshold
on the point estimate), ``headline_with_confidence`` the one the same rule picks with
confidence (:data:`HEADLINE_USES` says which decision the headline uses). Torch-free.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from workflow_scripts.core.retained import meets_with_confidence

COLUMNS = [
    "model", "family", "method", "setting", "total_params", "params_pct", "speedup",
    "accuracy_pct", "retained_pct", "retained_lo_pct", "retained_hi_pct", "eval_clips",
    "meets_threshold", "meets_with_confidence", "frontier", "headline",
    "headline_with_confidence",
]  # fmt: skip
#: Which decision the Pareto headline (the overview's "smallest model keeping the threshold")
#: uses; ``headline_with_confidence`` is the same pick with ``meets_with_confidence``.
HEADLINE_USES = "meets_threshold (point estimate)"


def _col(df: pd.DataFrame, name: str, default=math.nan) -> pd.Series:
    return df[name] if name in df else pd.Series(default, index=df.index)


def _speedup(df: pd.DataFrame, base: str, method: str) -> pd.Series:
    """``speedup`` when the stage measured it (interleaved with its baseline), else the ratio
    of the two latency columns."""
    if "speedup" in df:
        return df["speedup"].astype(float)
    return _col(df, base).astype(float) / _col(df, method).astype(float)


def _pruning_points(pruning: pd.DataFrame) -> pd.DataFrame:
    """The rows of the pruning table that are points: the curves (per-seed random rows
    dropped), each (model, strategy, layers removed) once, and the unpruned model (n = 0, the
    same in every strategy's curve) once per model."""
    p = pruning[pruning["seed"].isna()] if "seed" in pruning else pruning
    p = p.drop_duplicates(["model", "strategy", "n_removed"])
    zero = p[p.n_removed == 0].drop_duplicates("model")
    return pd.concat([zero, p[p.n_removed > 0]], ignore_index=True)


def unpruned_params(pruning=None, mimic=None, structured=None) -> dict:
    """Per model the unpruned fine-tuned model's parameter count, from whichever stage has
    it: the pruning curve's n = 0 row, the mimic cells' ``model_params`` or the structured
    cells' ``base_total_params`` (all ``count_parameters`` of the whole classifier)."""
    out: dict = {}
    sources = (
        (pruning, lambda t: t[t.n_removed == 0], "total_params"),
        (mimic, lambda t: t, "model_params"),
        (structured, lambda t: t, "base_total_params"),
    )
    for table, rows, col in sources:
        if table is None or not len(table) or col not in table:
            continue
        for model, value in rows(table).groupby("model", sort=False)[col].first().items():
            out.setdefault(model, float(value))
    return out


def _interval(row) -> dict:
    """A table row's retained interval (``retained_lo``, ``retained_hi``; NaN without)."""
    return {k: float(getattr(row, k, math.nan)) for k in ("retained_lo", "retained_hi")}


def points(pruning: pd.DataFrame | None = None, mimic: pd.DataFrame | None = None,
           structured: pd.DataFrame | None = None) -> pd.DataFrame:  # fmt: skip
    """Long rows (model, family, method, setting, total_params, speedup, accuracy, retained,
    eval_clips, retained_lo, retained_hi) of every setting of the stages given (accuracies as
    fractions here)."""
    rows = []
    if pruning is not None and len(pruning):
        p = _pruning_points(pruning)
        speed = _speedup(p, "base_latency_ms", "latency_ms")
        for r, s in zip(p.itertuples(index=False), speed, strict=True):
            unpruned = int(r.n_removed) == 0
            rows.append({
                "model": r.model, "family": "unpruned" if unpruned else "layer pruning",
                "method": "fine-tuned model" if unpruned else r.strategy,
                "setting": f"{int(r.n_removed)} of {int(r.n_layers)} layers removed",
                "total_params": r.total_params, "accuracy": r.accuracy,
                "retained": r.relative_accuracy, "speedup": 1.0 if unpruned else s,
                **_interval(r),
                "eval_clips": getattr(r, "eval_clips", getattr(r, "n_utterances", math.nan)),
            })  # fmt: skip
    if mimic is not None and len(mimic):
        speed = _speedup(mimic, "model_ms", "mimicked_model_ms")
        for r, s in zip(mimic.itertuples(index=False), speed, strict=True):
            rows.append({
                "model": r.model, "family": "mimicker", "method": f"{r.kind}-{int(r.depth)}",
                "setting": "replaces the whole stack", "total_params": r.mimicked_model_params,
                "accuracy": r.accuracy, "speedup": s,
                "retained": r.accuracy / r.backbone_accuracy if r.backbone_accuracy else math.nan,
                "eval_clips": getattr(r, "eval_clips", getattr(r, "n", math.nan)),
                **_interval(r),
            })  # fmt: skip
    if structured is not None and len(structured):
        speed = _speedup(structured, "base_latency_ms", "latency_ms")
        for r, s in zip(structured.itertuples(index=False), speed, strict=True):
            rows.append({
                "model": r.model, "family": "structured pruning",
                "method": f"target {r.target_sparsity:g}",
                "setting": f"{100 * r.achieved_sparsity:.0f}% of attention + FFN removed",
                "total_params": r.total_params, "accuracy": r.accuracy, "speedup": s,
                "retained": r.retained,
                "eval_clips": getattr(r, "eval_clips", getattr(r, "n_utterances", math.nan)),
                **_interval(r),
            })  # fmt: skip
    return pd.DataFrame(rows)


def frontier(params: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True for the points no other point dominates: none has at most as many parameters and
    at least the accuracy, with one of the two strictly better."""
    p, a = np.asarray(params, float), np.asarray(accuracy, float)
    le, ge = p[None, :] <= p[:, None], a[None, :] >= a[:, None]
    strict = (p[None, :] < p[:, None]) | (a[None, :] > a[:, None])
    return ~(le & ge & strict).any(axis=1)


def pareto_table(pruning=None, mimic=None, structured=None, threshold: float = 0.95):
    """The Pareto table (see the module docstring); percentages, models in order of
    appearance, each model's points by parameters. ``params_pct`` is in % of the unpruned
    model's parameters (:func:`unpruned_params`; NaN where no stage has that count)."""
    d = points(pruning, mimic, structured)
    if d.empty:
        return pd.DataFrame(columns=COLUMNS)
    full = unpruned_params(pruning, mimic, structured)
    out = []
    for model, g in d.groupby("model", sort=False):
        g = g.copy()
        g["params_pct"] = 100.0 * g.total_params.astype(float) / full.get(model, math.nan)
        g["frontier"] = frontier(g.total_params.to_numpy(), g.accuracy.to_numpy())
        out.append(g.sort_values(["total_params", "accuracy"], ascending=[True, False]))
    d = pd.concat(out, ignore_index=True)
    d["accuracy_pct"] = 100.0 * d.accuracy.astype(float)
    d["retained_pct"] = 100.0 * d.retained.astype(float)
    d["meets_threshold"] = d.retained.astype(float) >= threshold
    for k in ("retained_lo", "retained_hi"):
        d[f"{k}_pct"] = 100.0 * d[k].astype(float) if k in d else math.nan
    d["meets_with_confidence"] = meets_with_confidence(d.retained_lo_pct / 100.0, threshold)
    for col, confident in (("headline", False), ("headline_with_confidence", True)):
        d[col] = d.index.isin(smallest_meeting(d, confident).index)
    return d[COLUMNS]


def smallest_meeting(table: pd.DataFrame, confident: bool = False) -> pd.DataFrame:
    """Per model the frontier point with the fewest parameters that keeps the threshold: on
    the point estimate (``meets_threshold``: the overview's headline), or with confidence
    (``confident``: ``meets_with_confidence``)."""
    meets = table.meets_with_confidence if confident else table.meets_threshold
    ok = table[table.frontier & meets.astype(bool) & (table.family != "unpruned")]
    return ok.sort_values("total_params", kind="stable").groupby("model", sort=False).head(1)
