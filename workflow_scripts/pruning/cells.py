"""The layer-pruning grid: one cell per model x strategy (``rules/pruning.smk``).

Pure helpers for the rules (per-cell config slice, inputs, targets), the computation of one
cell on top of :mod:`workflow_scripts.pruning.core` (:func:`run_cell`) and the summary table.

Cell file ``results/cells/pruning/{model}/{strategy}.parquet``: one row per number of removed
blocks ``n = 0 .. L-1`` (``n = 0`` is the unpruned fine-tuned model). Importance scores
(``block_influence``, ``knn_block_influence``, ``angular_block``) come from the hidden-state
cache of the validation split, ``similarity_greedy`` runs validation clips through the model;
accuracy is measured on the test split. The ``random`` strategy is one cell holding the rows of
every configured seed (``seed`` = that seed) plus one mean-over-seeds row per ``n``
(``seed`` = null, ``removed`` = null, ``ci_lo``/``ci_hi`` = NaN, the seed spread in
``accuracy_min``/``accuracy_max``); every other strategy has ``seed`` = null.

This module imports neither torch nor transformers at import time: Snakemake imports it to
list targets and the report environment to build the tables.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

# Same names as workflow_scripts.pruning.core.STRATEGIES (a test checks) - repeated here so that
# importing this module does not import torch.
STRATEGIES = (
    "forward",
    "backward",
    "forward_backward",
    "block_influence",
    "knn_block_influence",
    "angular_block",
    "similarity_greedy",
    "random",
)
# Strategies whose removal order comes from the validation hidden-state cache.
CACHE_STRATEGIES = ("block_influence", "knn_block_influence", "angular_block")
HEAL_DEFAULTS = {
    "n": [],
    "steps": 100,
    "lr": 1e-4,
    "rank": 8,
    "alpha": 16.0,
    "batch_size": 32,
    "train_clips": None,
    "seed": 0,
}
LATENCY_COLUMNS = ("latency_ms", "latency_min_ms", "latency_batch_size", "latency_device")


# ----------------------------------------------------------------------------------------
# Config slices, inputs and targets
# ----------------------------------------------------------------------------------------
def strategies(config: dict) -> list[str]:
    """The configured strategies, in the order of :data:`STRATEGIES`."""
    chosen = (config.get("pruning") or {}).get("strategies") or {}
    return [s for s in STRATEGIES if s in chosen]


def strategy_pattern(config: dict) -> str:
    """Regex of the configured strategies (a wildcard constraint)."""
    return "|".join(strategies(config)) or "NO_STRATEGY"


def resolve_heal(pruning_cfg: dict, strategy: str) -> dict | None:
    """Healing settings of one strategy's cells: defaults < ``pruning.heal`` < the strategy's
    own ``heal``; None when no ``n`` is listed (healing off)."""
    own = (pruning_cfg.get("strategies", {}).get(strategy) or {}).get("heal") or {}
    heal = {**HEAL_DEFAULTS, **(pruning_cfg.get("heal") or {}), **own}
    if not heal["n"]:
        return None
    heal["n"] = sorted(int(n) for n in heal["n"])
    return heal


def cell_params(config: dict, strategy: str) -> dict:
    """The config slice one (model, strategy) cell depends on, and nothing else.

    The strategy's own settings; the test sample, evaluation batch and latency settings; the
    healing settings only when healing is on; the calibration sample size only for the
    strategies scored on the cache. Another strategy's settings never enter, so editing them
    does not rerun this cell.
    """
    p = config["pruning"]
    own = dict(p["strategies"][strategy] or {})
    own.pop("heal", None)
    keep_first = own.pop("keep_first", None)
    lat = p["latency"]
    cell = {
        "strategy": strategy,
        "settings": own,
        "keep_first": keep_first,
        "test_clips": p["test_clips"],
        "batch_size": p["batch_size"],
        "latency": dict(lat) if lat["enabled"] else {"enabled": False},
        "heal": resolve_heal(p, strategy),
    }
    if strategy in CACHE_STRATEGIES:
        cell["calibration_clips"] = p["calibration_clips"]
    return cell


def cell_json(config: dict, strategy: str) -> str:
    """Canonical JSON of :func:`cell_params` (a rule's ``params.cell``)."""
    from workflow_scripts.core.provenance import canonical_json

    return canonical_json(cell_params(config, strategy))


def tables_params(config: dict) -> dict:
    """The aggregation's slice: only the threshold of the headline number."""
    return {"threshold": config["pruning"]["threshold"]}


def cell_path(results: str, model: str, strategy: str) -> str:
    return f"{results}/cells/pruning/{model}/{strategy}.parquet"


def cell_paths(config: dict, results: str) -> list[str]:
    return [cell_path(results, m, s) for m in config["models"] for s in strategies(config)]


def cell_inputs(results: str, model: str, strategy: str) -> dict[str, str]:
    """The fine-tuned model and the manifest; the validation cache only for cache strategies
    (so the others neither wait for nor rerun on the cache)."""
    inputs = {
        "model": f"{results}/finetuned/{model}",
        "manifest": f"{results}/data/manifest.parquet",
    }
    if strategy in CACHE_STRATEGIES:
        inputs["cache"] = f"{results}/cache/{model}/validation.safetensors"
    return inputs


def table_outputs(results: str) -> dict[str, str]:
    """The aggregation rule's outputs (names as in ``rules/pruning.smk``)."""
    return {
        "table": f"{results}/tables/pruning.parquet",
        "summary_csv": f"{results}/tables/pruning_summary.csv",
        "summary_md": f"{results}/tables/pruning_summary.md",
        "accuracy_html": f"{results}/charts/pruning_accuracy.html",
        "accuracy_png": f"{results}/charts/pruning_accuracy.png",
        "latency_html": f"{results}/charts/pruning_latency.html",
        "latency_png": f"{results}/charts/pruning_latency.png",
    }


def targets(config: dict, results: str) -> list[str]:
    """Everything the pruning stage builds: every model x strategy cell, the aggregated table,
    the summary (csv + md) and the charts (html + png)."""
    return cell_paths(config, results) + list(table_outputs(results).values())


# ----------------------------------------------------------------------------------------
# Scores and removal sets
# ----------------------------------------------------------------------------------------
def scores_from_cache(strategy: str, H, settings: dict) -> np.ndarray:
    """Importance scores from a hidden-state stack ``H`` (L+1, N, T, D) of calibration clips
    (index 0 = input of block 0): length-L block influences (``block_influence``,
    ``knn_block_influence``; block l = change from h_l to h_l+1) or the (L+1, L+1) angular
    distance matrix (``angular_block``)."""
    from workflow_scripts.similarity import metrics as similarity

    if strategy == "block_influence":
        if settings.get("variant", "sequence") == "per_token":
            return similarity.block_influence_per_token(H)
        return similarity.block_influence(H)
    if strategy == "knn_block_influence":
        ks = settings.get("ks", (2, 4, 8, 16, 32, 64))
        return similarity.knn_block_influence(H, ks, settings.get("normalize", True))
    if strategy == "angular_block":
        return similarity.angular_distance_matrix(H, settings.get("reduce", "last"))
    raise ValueError(f"strategy {strategy!r} takes no scores from the cache")


def removal_plans(
    strategy: str,
    n_layers: int,
    settings: dict,
    keep_first: bool | None = None,
    scores=None,
    evaluator=None,
) -> list[tuple[int | None, list[list[int]]]]:
    """``[(seed, sets)]`` with ``sets[n]`` the blocks removed at n removed blocks: one entry per
    seed for ``random`` (``settings["seeds"]``), else one entry with seed None."""
    from workflow_scripts.pruning.core import removal_sets

    if strategy == "random":
        seeds = settings.get("seeds", [0])
        return [
            (int(s), removal_sets("random", n_layers, seed=int(s), keep_first=keep_first))
            for s in seeds
        ]
    sets = removal_sets(
        strategy, n_layers, scores=scores, evaluator=evaluator, keep_first=keep_first
    )
    return [(None, sets)]


# ----------------------------------------------------------------------------------------
# One cell
# ----------------------------------------------------------------------------------------
def _mean_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One mean-over-seeds row per n (random strategy)."""
    rows = []
    for _, g in df.groupby("n_removed", sort=True):
        first = g.iloc[0]
        row = first.to_dict()
        row.update(
            seed=None,
            removed=None,
            accuracy=float(g.accuracy.mean()),
            ci_lo=math.nan,
            ci_hi=math.nan,
            accuracy_min=float(g.accuracy.min()),
            accuracy_max=float(g.accuracy.max()),
            relative_accuracy=float(g.relative_accuracy.mean()),
            per_class_accuracy=list(np.mean(np.stack(g.per_class_accuracy.to_list()), axis=0)),
            transformer_params=int(round(g.transformer_params.mean())),
            total_params=int(round(g.total_params.mean())),
            latency_ms=float(g.latency_ms.median()),
            latency_min_ms=float(g.latency_min_ms.min()),
        )
        for col in ("healed_accuracy", "healed_relative_accuracy", "heal_seconds"):
            row[col] = float(g[col].mean()) if g[col].notna().any() else math.nan
        row.update(healed_ci_lo=math.nan, healed_ci_hi=math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def run_cell(
    model,
    cell: dict,
    test_audio: np.ndarray,
    test_labels: np.ndarray,
    device="cpu",
    scores=None,
    evaluator=None,
    train_data: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The rows of one pruning cell (see the module docstring) for a fine-tuned ``model``
    (eval mode, on ``device``) and the ``cell`` slice of :func:`cell_params`.

    Accuracy: one :func:`pruning.sweep` over all removal sets (all seeds) on the test clips,
    with prefix resumption. Latency: a second ``sweep`` over the first
    ``latency.batch_size`` test clips with timing on, so the timed batch is small and fixed.
    Healing (when ``cell["heal"]`` lists n): for each listed n < L, the set removed at n is
    healed with :func:`pruning.heal_with_lora` on ``train_data()`` (training split) and the
    healed model's test accuracy is reported beside the unhealed one.
    """
    import torch

    from workflow_scripts.backbones.finetune import accuracy_report, predict
    from workflow_scripts.pruning.core import heal_with_lora, n_layers, remove_layers, sweep

    log = log or (lambda _msg: None)
    strategy, settings = cell["strategy"], cell["settings"]
    device = torch.device(device)
    L = n_layers(model)
    plans = removal_plans(strategy, L, settings, cell.get("keep_first"), scores, evaluator)
    flat = [(seed, s) for seed, sets in plans for s in sets]
    sets = [s for _, s in flat]
    t0 = time.perf_counter()
    rows = sweep(model, test_audio, test_labels, strategy, sets, device,
                 batch_size=cell["batch_size"], latency=False)  # fmt: skip
    log(f"accuracy sweep of {len(sets)} sets: {time.perf_counter() - t0:.1f} s")
    lat = cell["latency"]
    if lat.get("enabled"):
        t0 = time.perf_counter()
        b = lat["batch_size"]
        timed = sweep(model, test_audio[:b], test_labels[:b], strategy, sets, device,
                      batch_size=b, latency=True, latency_warmup=lat["warmup"],
                      latency_repeats=lat["repeats"])  # fmt: skip
        for row, t in zip(rows, timed, strict=True):
            row.update({k: t[k] for k in LATENCY_COLUMNS})
        log(f"latency of {len(sets)} sets: {time.perf_counter() - t0:.1f} s")
    base_acc = rows[0]["accuracy"] if rows else math.nan
    for (seed, _), row in zip(flat, rows, strict=True):
        row.update(
            seed=seed,
            n_layers=L,
            base_accuracy=base_acc,
            accuracy_min=row["accuracy"],
            accuracy_max=row["accuracy"],
            latency_warmup=lat.get("warmup", 0),
            latency_repeats=lat.get("repeats", 0) if lat.get("enabled") else 0,
            latency_threads=torch.get_num_threads(),
            healed=False,
            healed_accuracy=math.nan,
            healed_ci_lo=math.nan,
            healed_ci_hi=math.nan,
            healed_relative_accuracy=math.nan,
            heal_steps=0,
            heal_seconds=math.nan,
        )
    heal = cell.get("heal")
    if heal:
        wanted = [n for n in heal["n"] if n < L]
        if wanted:
            if train_data is None:
                raise ValueError("healing is on but no training data was given")
            x_train, y_train = train_data()
            C = model.config.num_labels
            for (_, s), row in zip(flat, rows, strict=True):
                if len(s) not in wanted:
                    continue
                t0 = time.perf_counter()
                healed = heal_with_lora(
                    remove_layers(model, s), x_train, y_train, steps=heal["steps"],
                    lr=heal["lr"], rank=heal["rank"], alpha=heal["alpha"], device=device,
                    batch_size=heal["batch_size"], seed=heal["seed"],
                )  # fmt: skip
                rep = accuracy_report(
                    predict(healed, test_audio, device, cell["batch_size"]), test_labels, C
                )
                row.update(
                    healed=True,
                    healed_accuracy=rep["accuracy"],
                    healed_ci_lo=rep["ci_lo"],
                    healed_ci_hi=rep["ci_hi"],
                    healed_relative_accuracy=rep["accuracy"] / base_acc
                    if base_acc > 0
                    else math.nan,
                    heal_steps=heal["steps"],
                    heal_seconds=time.perf_counter() - t0,
                )
                log(f"healed {s}: {row['accuracy']:.4f} -> {rep['accuracy']:.4f}")
                del healed
    df = pd.DataFrame(rows)
    if strategy == "random":
        df = pd.concat([df, _mean_rows(df)], ignore_index=True)
    df["seed"] = df["seed"].astype("Int64")
    if scores is not None:
        df["scores"] = json.dumps(np.asarray(scores, dtype=float).round(6).tolist())
    else:
        df["scores"] = None
    return df


# ----------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------
def _curve_summary(g: pd.DataFrame, threshold: float) -> dict:
    g = g.sort_values("n_removed")
    n = g.n_removed.to_numpy(int)
    L = int(g.n_layers.iloc[0])
    acc = g.accuracy.to_numpy(float)
    rel = g.relative_accuracy.to_numpy(float)
    ok = (rel >= threshold) | (n == 0)  # n = 0 keeps 100% by definition
    best = int(n[ok].max())
    prefix = int(n[np.cumprod(ok).astype(bool)].max())
    at = g[g.n_removed == best].iloc[0]
    base = g[g.n_removed == 0].iloc[0]
    span = n.max() - n.min()

    def area(y):
        return float(np.trapezoid(y, n) / span) if span > 0 else float(y[0])

    lat0, lat = base.get("latency_ms", math.nan), at.get("latency_ms", math.nan)
    return {
        "n_layers": L,
        "base_accuracy": float(base.accuracy),
        "threshold": threshold,
        "max_removed": best,
        "max_removed_pct": 100.0 * best / L,
        "max_removed_prefix": prefix,
        "accuracy_at_max": float(at.accuracy),
        "relative_accuracy_at_max": float(at.relative_accuracy),
        "removed_at_max": None if at.removed is None else list(map(int, at.removed)),
        "total_params_pct_at_max": 100.0 * float(at.total_params) / float(base.total_params),
        "latency_ms_at_max": float(lat),
        "speedup_at_max": float(lat0) / float(lat) if lat and lat > 0 else math.nan,
        "auc_accuracy": area(acc),
        "auc_relative": area(rel),
    }


def summary_table(df: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """Per model, strategy and seed (null = deterministic strategy or mean over random seeds):

    * ``max_removed``: the largest n whose accuracy is >= ``threshold`` x the unpruned
      accuracy (the paper's headline number), ``max_removed_pct`` = 100 n / L;
    * ``max_removed_prefix``: the largest n such that every n' <= n keeps the threshold;
    * ``auc_accuracy`` / ``auc_relative``: area under the accuracy (relative accuracy) vs n
      curve over n = 0 .. L-1 (trapezoids), divided by L-1 - i.e. the mean accuracy over the
      curve, comparable across models of different depth;
    * accuracy, parameters and latency at ``max_removed``.
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
    order = {s: i for i, s in enumerate(STRATEGIES)}
    res["_o"] = res.strategy.map(order)
    res["_s"] = res.seed.fillna(-1)
    return res.sort_values(["model", "_o", "_s"]).drop(columns=["_o", "_s"]).reset_index(drop=True)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table (no extra dependency)."""

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, float | np.floating):
            return format(float(v), floatfmt)
        if isinstance(v, list | tuple | np.ndarray):
            return " ".join(map(str, v))
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in rec) + " |")
    return "\n".join(lines) + "\n"
