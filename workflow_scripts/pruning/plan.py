"""The layer-pruning stage's plan (``rules/pruning.smk``): one cell per model x configured
strategy on the fine-tuned classifier, then the aggregated table, the summary and the charts.

Cell file ``cells/pruning/{model}/{strategy}.parquet`` (:mod:`workflow_scripts.pruning.run`).
Torch-free: Snakemake imports it on every run, the report environment to build the tables.
"""

from __future__ import annotations

import re

from workflow_scripts.backbones.plan import test_clips
from workflow_scripts.core import paths
from workflow_scripts.core.code import references
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.pruning import strategies as registry

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


def strategies(config: dict) -> list[str]:
    """The configured strategies, in registry order (:data:`~.strategies.STRATEGIES`)."""
    chosen = (config.get("pruning") or {}).get("strategies") or {}
    return [s for s in registry.STRATEGIES if s in chosen]


def cells(config: dict) -> list[dict[str, str]]:
    """The wildcards of every cell: each model x each configured strategy."""
    return [{"model": m, "strategy": s} for m in config["models"] for s in strategies(config)]


def cell_paths(config: dict, results: str = RESULTS) -> list[str]:
    return [paths.path("pruning_cell", results, **w) for w in cells(config)]


def resolve_heal(pruning_cfg: dict, strategy: str) -> dict | None:
    """Healing settings of one strategy's cells: defaults < ``pruning.heal`` < the strategy's
    own ``heal``; None when no ``n`` is listed (healing off)."""
    own = (pruning_cfg.get("strategies", {}).get(strategy) or {}).get("heal") or {}
    heal = {**HEAL_DEFAULTS, **(pruning_cfg.get("heal") or {}), **own}
    if not heal["n"]:
        return None
    heal["n"] = sorted(int(n) for n in heal["n"])
    return heal


def cell_modules(config: dict, *, strategy: str, model: str | None = None) -> list[str]:
    """The modules a cell loads by name: its strategy's scores function or evaluator."""
    return references(registry.get(strategy))


def cell_slice(config: dict, *, strategy: str, model: str | None = None) -> dict:
    """The config slice one (model, strategy) cell depends on, and nothing else (the same for
    every model: the model enters through the cell's input).

    The strategy's own settings (over its registry defaults); the test sample (the
    evaluation set, ``evaluation.test_clips``), evaluation batch and latency settings; the
    headline threshold (the cell exports the headline model); the healing settings only when
    healing is on; the calibration sample size only for the strategies scored on the cache.
    Another strategy's settings never enter, so editing them does not rerun this cell.
    """
    p = config["pruning"]
    own = registry.resolve_settings(strategy, p["strategies"][strategy])
    own.pop("heal", None)
    keep_first = own.pop("keep_first", None)
    lat = p["latency"]
    cell = {
        "strategy": strategy,
        "settings": own,
        "keep_first": keep_first,
        "test_clips": test_clips(config),
        "batch_size": p["batch_size"],
        "threshold": p["threshold"],
        "latency": dict(lat) if lat["enabled"] else {"enabled": False},
        "heal": resolve_heal(p, strategy),
    }
    if registry.get(strategy).needs == "cache":
        cell["calibration_clips"] = p["calibration_clips"]
    return cell


def cell_inputs(
    config: dict, results: str = RESULTS, *, model: str, strategy: str
) -> dict[str, str]:
    """The fine-tuned model and the manifest; the validation cache only for the strategies
    scored on it (so the others neither wait for nor rerun on the cache)."""
    inputs = {
        "model": paths.path("finetuned", results, model=model),
        "manifest": paths.path("manifest", results),
    }
    if registry.get(strategy).needs == "cache":
        inputs["cache"] = paths.path("cache", results, model=model, split="validation")
    return inputs


def export_bytes(config: dict, results: str = RESULTS, *, model: str, strategy: str,
                 **_wildcards) -> int:  # fmt: skip
    """Disk of a cell's export (the rule's ``disk_mb``): one checkpoint of at most the whole
    fine-tuned model, one per seed for a seeded strategy."""
    from workflow_scripts.backbones.plan import model_bytes

    own = registry.resolve_settings(strategy, config["pruning"]["strategies"][strategy])
    copies = len(own["seeds"]) if registry.get(strategy).seeded else 1
    return copies * model_bytes(config, model, results)


def wildcard_constraints(config: dict) -> dict[str, str]:
    """``strategy``: one of the configured strategies."""
    return {"strategy": "|".join(map(re.escape, strategies(config))) or "NO_STRATEGY"}


def tables_slice(config: dict) -> dict:
    """The aggregation's slice: only the threshold of the headline number."""
    return {"threshold": config["pruning"]["threshold"]}


def tables_inputs(config: dict, results: str = RESULTS) -> dict[str, list[str]]:
    return {"cells": cell_paths(config, results)}


def targets(config: dict, results: str = RESULTS) -> list[str]:
    """Everything the pruning stage builds: every model x strategy cell, the aggregated table,
    the summary (csv + md) and the charts (html + png)."""
    return cell_paths(config, results) + list(paths.tables("pruning", results).values())


def config_problems(config: dict) -> list[str]:
    """The configured strategies checked against the registry, each problem naming its key:
    unknown strategies, unknown settings of a strategy and bad setting values."""
    return registry.config_problems((config.get("pruning") or {}).get("strategies") or {})
