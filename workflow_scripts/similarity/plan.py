"""The similarity stage's plan (``rules/similarity.smk``): one cell per model x configured
metric on the model's validation hidden-state cache, the per-model block tables, and the
stacked table with its heatmaps. Torch-free: Snakemake imports it on every run."""

from __future__ import annotations

import re

from workflow_scripts.core import paths
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.similarity import registry


def metrics(config: dict) -> list[str]:
    """The configured metric names, in config order."""
    return list(config["similarity"]["metrics"])


def cells(config: dict) -> list[dict[str, str]]:
    """The wildcards of every cell: each model x each configured metric."""
    return [{"model": m, "metric": metric} for m in config["models"] for metric in metrics(config)]


def cell_paths(config: dict, results: str = RESULTS) -> list[str]:
    return [paths.path("similarity_cell", results, **w) for w in cells(config)]


def cell_slice(config: dict, *, model: str, metric: str) -> dict:
    """One cell's slice: the metric's own parameters plus the sampling settings (the same for
    every model: the model enters through the cell's input)."""
    sim = config["similarity"]
    return {
        "metric": metric,
        "params": sim["metrics"][metric],
        "clips": sim["clips"],
        "n_boot": sim["n_boot"],
        "seed": sim["seed"],
    }


def cell_inputs(config: dict, results: str = RESULTS, *, model: str, metric: str) -> dict[str, str]:
    """The model's validation hidden-state cache (the same for every metric)."""
    return {"cache": paths.path("cache", results, model=model, split="validation")}


def wildcard_constraints(config: dict) -> dict[str, str]:
    """``metric``: one of the configured metrics."""
    return {"metric": "|".join(map(re.escape, metrics(config))) or "NO_METRIC"}


def tables_slice(config: dict) -> dict:
    """The block detector's settings: the slice of the tables and of each model's blocks."""
    return config["similarity"]["blocks"]


def tables_inputs(config: dict, results: str = RESULTS) -> dict[str, list[str]]:
    return {"cells": cell_paths(config, results)}


def model_chart_paths(config: dict, results: str = RESULTS) -> list[str]:
    """One heatmap page per model."""
    return [paths.path("similarity_model_chart", results, model=m) for m in config["models"]]


def targets(config: dict, results: str = RESULTS) -> list[str]:
    """Every cell, the stacked table, the blocks table and the charts."""
    tables = list(paths.tables("similarity", results).values())
    return cell_paths(config, results) + tables + model_chart_paths(config, results)


def config_problems(config: dict) -> list[str]:
    """Unknown metrics, unknown parameters of a metric and bad parameter values, checked
    against the metric registry (:func:`workflow_scripts.similarity.registry.config_problems`)."""
    return registry.config_problems((config.get("similarity") or {}).get("metrics") or {})
