"""The structured-pruning grid: one cell per model x target sparsity (``rules/structured.smk``).

Pure helpers for the rules (per-cell config slice, inputs, targets), the summary table and
the long table of the cross-method comparison chart (structured pruning vs layer pruning vs
mimickers: test accuracy against whole-model parameters). The computation of a cell is in
:mod:`workflow_scripts.structured.core` and ``scripts/structured_cell.py``.

Cell file ``results/cells/structured/{model}/{sparsity}.parquet`` (one row): target and
achieved sparsity (fraction of the prunable transformer-stack parameters removed - attention
projections and FFN of every block, weights and biases), parameter counts, latency, test
accuracy of the pruned model with the fine-tuned head and its fraction of the unpruned
model's accuracy on the same clips, kept heads / head dimensions / FFN units per block (list
columns). The pruned model itself goes to ``results/structured/{model}/{sparsity}/``.

This module imports neither torch nor transformers (Snakemake and the report env import it).
"""

from __future__ import annotations

import math

import pandas as pd

from workflow_scripts.core.provenance import canonical_json

CELL_DIR = "cells/structured"
TABLE_KEYS = ("table", "csv", "md", "comparison_html", "comparison_png")
# The mimic stage's aggregated table (rules/mimic.smk) and the pruning stage's.
OTHER_TABLES = {"pruning": "tables/pruning.parquet", "mimic": "tables/mimic.parquet"}
SUMMARY_COLUMNS = [
    "model", "target_sparsity", "achieved_sparsity", "expected_sparsity", "accuracy",
    "base_accuracy", "retained", "finetuned_accuracy", "finetuned_retained", "total_params",
    "base_total_params", "latency_ms", "base_latency_ms", "speedup", "kept_heads",
    "kept_ffn_units",
]  # fmt: skip


def sparsity_name(target: float) -> str:
    """The ``{sparsity}`` wildcard of a target: ``0.5`` -> ``"0.5"``."""
    return f"{float(target):g}"


def sparsities(config: dict) -> list[str]:
    return [sparsity_name(t) for t in sorted(set(config["structured"]["targets"]))]


def sparsity_pattern(config: dict) -> str:
    """Regex of the configured target names (a wildcard constraint)."""
    return "|".join(s.replace(".", r"\.") for s in sparsities(config)) or "NO_SPARSITY"


def cell_path(results: str, model: str, sparsity: str) -> str:
    return f"{results}/{CELL_DIR}/{model}/{sparsity}.parquet"


def model_dir(results: str, model: str, sparsity: str) -> str:
    """Where a cell saves its physically pruned model."""
    return f"{results}/structured/{model}/{sparsity}"


def cell_paths(config: dict, results: str) -> list[str]:
    return [cell_path(results, m, s) for m in config["models"] for s in sparsities(config)]


def table_outputs(results: str) -> dict[str, str]:
    """The aggregation rule's outputs (names as in ``rules/structured.smk``)."""
    return {
        "table": f"{results}/tables/structured.parquet",
        "csv": f"{results}/tables/structured.csv",
        "md": f"{results}/tables/structured.md",
        "comparison_html": f"{results}/charts/comparison.html",
        "comparison_png": f"{results}/charts/comparison.png",
    }


def targets(config: dict, results: str) -> list[str]:
    """Everything the stage builds: every model x sparsity cell, the table, the chart."""
    return cell_paths(config, results) + list(table_outputs(results).values())


def comparison_inputs(config: dict, results: str) -> dict[str, str]:
    """The other methods' aggregated tables the comparison chart reads: those of the stages
    enabled in ``outputs`` (so the chart never forces a disabled stage to run)."""
    outs = set(config["outputs"])
    return {k: f"{results}/{p}" for k, p in OTHER_TABLES.items() if k in outs}


def cell_params(config: dict, sparsity: str | float) -> dict:
    """The config slice one (model, sparsity) cell depends on: the whole ``structured``
    section except the list of targets, plus this cell's target (so adding a target never
    reruns the other cells). The short fine-tune's settings enter only when it is on."""
    s = {k: v for k, v in config["structured"].items() if k != "targets"}
    s["target"] = float(sparsity)
    ft = dict(s.get("finetune") or {})
    s["finetune"] = ft if ft.get("steps", 0) > 0 else {"steps": 0}
    return s


def cell_json(config: dict, sparsity: str | float) -> str:
    """Canonical JSON of :func:`cell_params` (a rule's ``params.cell``)."""
    return canonical_json(cell_params(config, sparsity))


def cell_inputs(results: str, model: str) -> dict[str, str]:
    """The fine-tuned model, its training-split hidden-state cache (the distillation data) and
    the manifest (test clips; training clips for the optional fine-tune)."""
    return {
        "model": f"{results}/finetuned/{model}",
        "train_cache": f"{results}/cache/{model}/training.safetensors",
        "manifest": f"{results}/data/manifest.parquet",
    }


# ----------------------------------------------------------------------------------------
# Summary and comparison
# ----------------------------------------------------------------------------------------
def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, models in order of appearance, targets ascending."""
    if df.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    d = df.copy()
    models = {m: i for i, m in enumerate(dict.fromkeys(d.model))}
    d = d.assign(_m=d.model.map(models)).sort_values(["_m", "target_sparsity"], kind="stable")
    return d[[c for c in SUMMARY_COLUMNS if c in d.columns]].reset_index(drop=True)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (floats rounded, lists space-separated)."""

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        if hasattr(v, "__len__") and not isinstance(v, str):
            return " ".join(map(str, v))
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"


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
