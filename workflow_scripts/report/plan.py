"""The aggregation plan (``rules/aggregate.smk``): the baseline table and the overview, which
combines the tables of the stages listed in ``config.outputs``. Torch-free."""

from __future__ import annotations

from workflow_scripts.backbones import plan as backbones
from workflow_scripts.core import paths
from workflow_scripts.core.paths import RESULTS

# The stages whose aggregated tables the overview can combine, in the overview's order.
STAGES = ("similarity", "pruning", "mimic", "structured", "speechllm")


def enabled_stages(config: dict) -> list[str]:
    """The stages whose results the overview combines: those listed in ``config.outputs``."""
    outputs = set(config.get("outputs") or [])
    return [s for s in STAGES if s in outputs]


def baseline_inputs(config: dict, results: str = RESULTS) -> dict[str, list[str]]:
    return {"cells": backbones.cell_paths(config, results)}


def overview_inputs(config: dict, results: str = RESULTS) -> dict[str, str]:
    """The aggregated tables the overview reads: the baseline always, each enabled stage's
    table (the similarity stage's detected groups)."""
    stages = enabled_stages(config)
    inputs = {"baseline": paths.tables("baseline", results)["table"]}
    if "similarity" in stages:
        inputs["blocks"] = paths.tables("similarity", results)["blocks"]
    for stage in ("pruning", "mimic", "structured"):
        if stage in stages:
            inputs[stage] = paths.tables(stage, results)["table"]
    if "speechllm" in stages:
        sllm = paths.tables("speechllm", results)
        inputs["speechllm_summary"], inputs["speechllm_overlap"] = (
            sllm["summary_csv"],
            sllm["overlap_csv"],
        )
    return inputs


def accuracy_threshold(config: dict) -> float:
    """The share of the unpruned model's accuracy a compressed model must keep to count as
    keeping it, in every stage's tables: ``pruning.threshold``, 0.95 when pruning is off."""
    return (config.get("pruning") or {}).get("threshold", 0.95)


def overview_slice(config: dict) -> dict:
    """The overview's slice: which stages it combines and the accuracy threshold of the
    headline numbers (:func:`accuracy_threshold`)."""
    return {"stages": enabled_stages(config), "threshold": accuracy_threshold(config)}


def targets(config: dict, results: str = RESULTS) -> list[str]:
    """What ``rule all`` builds for ``outputs: [tables]``: the baseline table and the
    overview (each with csv, markdown and chart); the stages' own tables come with them."""
    return [
        *paths.tables("baseline", results).values(),
        *paths.tables("overview", results).values(),
    ]


def config_problems(config: dict) -> list[str]:
    """The aggregation has no settings of its own to check."""
    return []
