"""The similarity stage's plan (``rules/similarity.smk``): one cell per model x configured
metric on the model's validation hidden-state cache, the per-model block tables, and the
stacked table with its heatmaps. Torch-free: Snakemake imports it on every run."""

from __future__ import annotations

import re

from workflow_scripts.core import paths
from workflow_scripts.core.code import references
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


def cell_modules(config: dict, *, model: str, metric: str) -> list[str]:
    """The modules a cell loads by name: those its metric's registry entry names."""
    return references(registry.get(metric))


def cell_slice(config: dict, *, model: str, metric: str) -> dict:
    """One cell's slice: the metric's own parameters plus the sampling settings (the same for
    every model: the model enters through the cell's input), ``batch_size`` included (None =
    all utterances at once; an int b = the mean over batches of b utterances)."""
    sim = config["similarity"]
    return {
        "metric": metric,
        "params": sim["metrics"][metric],
        "clips": sim["clips"],
        "n_boot": sim["n_boot"],
        "seed": sim["seed"],
        "batch_size": sim.get("batch_size"),
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


#: Metrics with neighbourhood sizes ``ks`` (those of ``block_influence`` only in its k-NN
#: variant), which the utterances a score sees bound: k <= n - 1 (the diagonal is masked).
_KNN_METRICS = {"mutual_knn": None, "block_influence": ("variant", "knn")}


def _knn_params(sim: dict) -> list[tuple[str, dict]]:
    """(name, resolved parameters) of the configured metrics that take k-NN ``ks``."""
    out = []
    for name, only_if in _KNN_METRICS.items():
        if name not in (sim.get("metrics") or {}):
            continue
        try:
            p = registry.resolve_params(name, sim["metrics"][name])
        except (ValueError, TypeError):  # reported by registry.config_problems
            continue
        if only_if is None or p[only_if[0]] == only_if[1]:
            out.append((name, p))
    return out


def _size_problems(config: dict) -> list[str]:
    """``similarity.batch_size`` against the utterances used, and the k-NN metrics' ks against
    the utterances one score sees: a batch (b - 1 candidate neighbours), or all at once with
    mutual k-NN half-sampling (half-samples of N // 2 utterances; N known only when
    ``similarity.clips`` or ``cache.clips`` is set)."""
    sim = config.get("similarity") or {}
    b, used = sim.get("batch_size"), sim.get("clips")
    if used is None:  # all cached utterances
        used = (config.get("cache") or {}).get("clips")
    problems = []
    if b is not None and isinstance(used, int) and b > used:
        problems.append(
            f"config.similarity.batch_size: {b} is more than the {used} utterances used "
            "(similarity.clips, or cache.clips when that is null)"
        )
    for name, p in _knn_params(sim):
        if b is not None:
            limit, where = b - 1, f"a batch of similarity.batch_size = {b} utterances"
        elif name == "mutual_knn" and p["ci_scheme"] == "half" and isinstance(used, int):
            if sim.get("n_boot", 1) <= 0:
                continue
            limit, where = used // 2 - 1, f"the CI's half-samples of {used // 2} utterances"
        else:
            continue
        big = [k for k in p["ks"] if k > limit]
        if big:
            problems.append(
                f"config.similarity.metrics.{name}.ks: k = {big} cannot be reached in {where} "
                f"(at most {limit} neighbours with the diagonal masked); use ks <= {limit}"
            )
    return problems


def config_problems(config: dict) -> list[str]:
    """Unknown metrics, unknown parameters of a metric and bad parameter values, checked
    against the metric registry (:func:`workflow_scripts.similarity.registry.config_problems`);
    then sizes: a ``similarity.batch_size`` above the utterances used, and any k-NN ``ks``
    entry a score cannot reach (k >= b in batches of b; k >= N // 2 for mutual k-NN's
    half-sampling CI on all N at once)."""
    metrics = (config.get("similarity") or {}).get("metrics") or {}
    return registry.config_problems(metrics) + _size_problems(config)
