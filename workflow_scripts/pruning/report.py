"""The layer-pruning tables: the summary of the stacked cells (largest n at >= threshold,
AUC); the markdown is :func:`workflow_scripts.core.tables.markdown_table`. Torch-free."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from workflow_scripts.pruning.strategies import STRATEGIES


def _kept(g: pd.DataFrame, threshold: float,
          column: str = "relative_accuracy") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(n, whether n keeps >= ``threshold`` of the unpruned accuracy) of one curve sorted by
    n; n = 0 keeps 100% by definition. ``column``: ``relative_accuracy`` (the point
    estimate) or ``retained_lo`` (the lower end of its paired bootstrap interval: kept with
    confidence; NaN = not kept)."""
    n = g.n_removed.to_numpy(int)
    return n, (g[column].to_numpy(float) >= threshold) | (n == 0)


def prefix_headline(g: pd.DataFrame, threshold: float, column: str = "relative_accuracy") -> int:
    """The headline n of one accuracy-vs-n curve: the largest n such that every n' <= n
    keeps >= ``threshold`` of the unpruned accuracy (a dip stops it); on the point estimate,
    or with confidence for ``column="retained_lo"`` (:func:`_kept`)."""
    n, ok = _kept(g.sort_values("n_removed"), threshold, column)
    return int(n[np.cumprod(ok).astype(bool)].max())


def headline_rows(df: pd.DataFrame, threshold: float) -> pd.Series:
    """Whether each row is its curve's headline (:func:`prefix_headline`); a curve is one
    (model, strategy, seed) - the mean over random seeds (seed null) is a curve of its own."""
    keys = [k for k in ("model", "strategy", "seed") if k in df.columns]
    out = pd.Series(False, index=df.index)
    for _, g in df.groupby(keys, dropna=False, sort=False):
        best = prefix_headline(g, threshold)
        out[g.index[g.n_removed.to_numpy(int) == best]] = True
    return out


def base_latency(g: pd.DataFrame) -> float:
    """The unpruned model's latency of one curve: the median of its rows' interleaved
    ``base_latency_ms`` (every removal set was timed against it), or the n = 0 row's
    ``latency_ms`` for cells without that column."""
    if "base_latency_ms" in g:
        return float(g.base_latency_ms.median())
    return float(g[g.n_removed == 0].latency_ms.iloc[0]) if "latency_ms" in g else math.nan


def _removed(row) -> list[int] | None:
    """The 0-based block indices a curve row removes (None for the mean over seeds)."""
    r = row.get("removed")
    return None if r is None else list(map(int, r))


def _curve_summary(g: pd.DataFrame, threshold: float) -> dict:
    """The headline numbers of one accuracy-vs-n curve (see :func:`summary_table`)."""
    g = g.sort_values("n_removed")
    n, ok = _kept(g, threshold)
    L = int(g.n_layers.iloc[0])
    acc = g.accuracy.to_numpy(float)
    rel = g.relative_accuracy.to_numpy(float)
    best = int(n[ok].max())
    prefix = prefix_headline(g, threshold)
    at = g[g.n_removed == best].iloc[0]
    at_prefix = g[g.n_removed == prefix].iloc[0]
    base = g[g.n_removed == 0].iloc[0]
    span = n.max() - n.min()
    confident = _confident(g, threshold)

    def area(y):
        return float(np.trapezoid(y, n) / span) if span > 0 else float(y[0])

    def speedup(row):
        if "speedup" in row:  # timed against the unpruned model in the same run
            return float(row["speedup"])
        lat0, lat = base.get("latency_ms", math.nan), row.get("latency_ms", math.nan)
        return float(lat0) / float(lat) if lat and lat > 0 else math.nan

    return {
        "n_layers": L,
        "base_accuracy": float(base.accuracy),
        "threshold": threshold,
        "max_removed": best,
        "max_removed_pct": 100.0 * best / L,
        "max_removed_prefix": prefix,
        **confident,
        "accuracy_at_prefix": float(at_prefix.accuracy),
        "relative_accuracy_at_prefix": float(at_prefix.relative_accuracy),
        "retained_lo_at_prefix": float(at_prefix.get("retained_lo", math.nan)),
        "retained_hi_at_prefix": float(at_prefix.get("retained_hi", math.nan)),
        "removed_at_prefix": _removed(at_prefix),
        "speedup_at_prefix": speedup(at_prefix),
        "accuracy_at_max": float(at.accuracy),
        "relative_accuracy_at_max": float(at.relative_accuracy),
        "removed_at_max": _removed(at),
        "total_params_pct_at_max": 100.0 * float(at.total_params) / float(base.total_params),
        "latency_ms_at_max": float(at.get("latency_ms", math.nan)),
        "base_latency_ms": base_latency(g),
        "speedup_at_max": speedup(at),
        "auc_accuracy": area(acc),
        "auc_relative": area(rel),
    }


def _confident(g: pd.DataFrame, threshold: float) -> dict:
    """The removable counts with confidence of one curve sorted by n (issue #26): n whose
    retained interval's lower bound (``retained_lo``) keeps ``threshold`` -
    ``max_removed_prefix_ci`` (every n' <= n too) and ``max_removed_ci`` (dips allowed);
    null for cells without the interval."""
    if "retained_lo" not in g or not g.retained_lo.notna().any():
        return {"max_removed_prefix_ci": None, "max_removed_ci": None}
    n, ok = _kept(g, threshold, "retained_lo")
    return {"max_removed_prefix_ci": prefix_headline(g, threshold, "retained_lo"),
            "max_removed_ci": int(n[ok].max())}  # fmt: skip


def summary_table(df: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """Per model, strategy and seed (null = deterministic strategy or mean over random seeds):

    * ``max_removed``: the largest n whose accuracy is >= ``threshold`` x the unpruned
      accuracy (the paper's headline number), ``max_removed_pct`` = 100 n / L;
    * ``max_removed_prefix``: the largest n such that every n' <= n keeps the threshold (the
      cell's ``headline`` row, whose model is exported), with the accuracy, relative accuracy,
      its paired bootstrap interval (``retained_lo_at_prefix``, ``retained_hi_at_prefix``)
      and speed-up there (``*_at_prefix``) - all on the point estimate;
    * ``max_removed_prefix_ci`` / ``max_removed_ci``: the same counts *with confidence*, where
      the lower end of the retained interval (``retained_lo``) keeps the threshold (null for
      cells without it);
    * ``auc_accuracy`` / ``auc_relative``: area under the accuracy (relative accuracy) vs n
      curve over n = 0 .. L-1 (trapezoids), divided by L-1 - i.e. the mean accuracy over the
      curve, comparable across models of different depth;
    * ``base_latency_ms``: the unpruned model's latency (:func:`base_latency`);
    * accuracy, parameters and latency at ``max_removed``; speed-ups are the cell's
      ``speedup`` (timed against the unpruned model in the same run), or the ratio of the
      latency medians for cells without it.
    """
    out = []
    d = df.copy()
    d["seed"] = d["seed"].astype("Int64")
    for (model, strategy, seed), g in d.groupby(["model", "strategy", "seed"], dropna=False,
                                                sort=False):  # fmt: skip
        seed = None if pd.isna(seed) else int(seed)
        out.append({"model": model, "strategy": strategy, "seed": seed,
                    **_curve_summary(g, threshold)})  # fmt: skip
    res = pd.DataFrame(out)
    if res.empty:
        return res
    res["seed"] = res["seed"].astype("Int64")
    for col in ("max_removed_prefix_ci", "max_removed_ci"):
        res[col] = res[col].astype("Int64")
    order = {s: i for i, s in enumerate(STRATEGIES)}
    res["_o"] = res.strategy.map(order)
    res["_s"] = res.seed.fillna(-1)
    return res.sort_values(["model", "_o", "_s"]).drop(columns=["_o", "_s"]).reset_index(drop=True)


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it (``pruning_summary.{csv,md}``): accuracies, retained
    shares and the threshold in percent (``_pct``), the removed layers numbered 1..L
    (``removed_layers_at_*``; the 0-based block indices in ``removed_index_at_*``), the
    parameters in % of the whole unpruned model. :func:`summary_table` (fractions, 0-based
    indices) is what code reads."""
    from workflow_scripts.core.tables import layer_text, percent_columns

    d = summary.copy()
    for at in ("prefix", "max"):
        if f"removed_at_{at}" in d:
            idx = d.pop(f"removed_at_{at}")
            d[f"removed_layers_at_{at}"] = [layer_text(i) for i in idx]
            d[f"removed_index_at_{at}"] = [None if i is None else list(map(int, i)) for i in idx]
    d = d.rename(columns={"total_params_pct_at_max": "whole_model_params_pct_at_max",
                          "max_removed_pct": "max_removed_pct_of_layers"})  # fmt: skip
    return percent_columns(percent_columns(d), ["threshold"])
