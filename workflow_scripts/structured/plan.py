"""The structured-pruning grid's plan (``rules/structured.smk``): one cell per model x target
sparsity, then the table and the cross-method comparison chart. Torch-free: Snakemake imports
it on every run.

A cell ``cells/structured/{model}/{sparsity}.parquet`` (one row;
:func:`workflow_scripts.structured.run.run_cell`) holds the target and achieved sparsity
(fraction of the prunable transformer-stack parameters removed - attention projections and FFN
of every block, weights and biases), parameter counts, latency, test accuracy of the pruned
model with the fine-tuned head and its fraction of the unpruned model's accuracy on the same
clips, kept heads / head dimensions / FFN units per block (list columns). The pruned model
itself goes to ``structured/{model}/{sparsity}/``. Wildcards arrive as strings (``sparsity``
"0.3").
"""

from __future__ import annotations

import re

from workflow_scripts.backbones.plan import layer_fraction, test_clips
from workflow_scripts.core import paths
from workflow_scripts.core.config import model_num_layers
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.report.plan import accuracy_threshold

# The other stages whose aggregated tables the comparison chart reads, when they are enabled.
COMPARED_STAGES = ("pruning", "mimic")


# --------------------------------------------------------------------------------------------
# the grid and its files
# --------------------------------------------------------------------------------------------
def sparsity_name(target: float) -> str:
    """The ``{sparsity}`` wildcard of a target: ``0.5`` -> ``"0.5"``."""
    return f"{float(target):g}"


def sparsities(config: dict) -> list[str]:
    """The configured targets' names, ascending."""
    return [sparsity_name(t) for t in sorted(set(config["structured"]["targets"]))]


def cells(config: dict) -> list[dict[str, str]]:
    """The wildcards of every cell: per model (config order) every target, ascending."""
    return [{"model": m, "sparsity": s} for m in config["models"] for s in sparsities(config)]


def cell_paths(config: dict, results: str = RESULTS) -> list[str]:
    """Every cell's parquet."""
    return [paths.path("structured_cell", results, **c) for c in cells(config)]


def wildcard_constraints(config: dict) -> dict[str, str]:
    """``sparsity``: one of the configured target names."""
    return {"sparsity": "|".join(map(re.escape, sparsities(config))) or "NO_SPARSITY"}


def tables_slice(config: dict) -> dict:
    """The aggregation rule's slice: which other methods the comparison chart shows and the
    accuracy threshold of the summary's verdicts (the overview's)."""
    return {"comparison": sorted(compared_tables(config)),
            "threshold": accuracy_threshold(config)}  # fmt: skip


def compared_tables(config: dict, results: str = RESULTS) -> dict[str, str]:
    """The other methods' aggregated tables the comparison chart reads: those of the stages
    enabled in ``outputs`` (so the chart never forces a disabled stage to run)."""
    outs = set(config["outputs"])
    return {s: paths.tables(s, results)["table"] for s in COMPARED_STAGES if s in outs}


def tables_inputs(config: dict, results: str = RESULTS) -> dict[str, list[str] | str]:
    """What the aggregation rule reads: every cell, and the compared stages' tables."""
    return {**compared_tables(config, results), "cells": cell_paths(config, results)}


def targets(config: dict, results: str = RESULTS) -> list[str]:
    """What ``rule all`` builds for ``outputs: [structured]``: every model x sparsity cell, the
    table and the comparison chart."""
    return cell_paths(config, results) + list(paths.tables("structured", results).values())


# --------------------------------------------------------------------------------------------
# per-cell config slice and inputs
# --------------------------------------------------------------------------------------------
def cell_slice(config: dict, *, model: str, sparsity: str | float) -> dict:
    """The config slice one (model, sparsity) cell depends on: the whole ``structured``
    section except the list of targets, plus this cell's target (so adding a target never
    reruns the other cells) and ``test_clips``, the evaluation set (``evaluation.test_clips``,
    as every stage). The short fine-tune's settings enter only when it is on, and
    ``distill.teacher`` only when it is ``computed`` (``cached``, the default, is the
    computation from before the key existed, so those cells stay current). The model enters
    through the cell's inputs."""
    s = {k: v for k, v in config["structured"].items() if k != "targets"}
    distill = dict(s.get("distill") or {})
    if distill.get("teacher", "cached") == "cached":
        distill.pop("teacher", None)
    s["distill"] = distill
    s["test_clips"] = test_clips(config)
    s["target"] = float(sparsity)
    ft = dict(s.get("finetune") or {})
    s["finetune"] = ft if ft.get("steps", 0) > 0 else {"steps": 0}
    return s


def cell_inputs(
    config: dict, results: str = RESULTS, *, model: str, sparsity: str | float
) -> dict[str, str]:
    """The fine-tuned model, its training-split hidden-state cache (the distillation data) and
    the manifest (test clips; training clips for the optional fine-tune)."""
    return {
        "model": paths.path("finetuned", results, model=model),
        "train_cache": paths.path("cache", results, model=model, split="training"),
        "manifest": paths.path("manifest", results),
    }


def default_distill_layers(n_layers: int) -> list[int]:
    """Hidden-state indices distilled by default: about L/3, 2L/3 and L (DPHuBERT: 4, 8, 12)."""
    return sorted({layer_fraction(1, 3, n_layers), layer_fraction(2, 3, n_layers), n_layers})


def distill_layers(cell: dict, n_layers: int) -> list[int]:
    """The hidden-state indices a cell distils for a model of ``n_layers`` blocks:
    ``distill.layers`` or :func:`default_distill_layers`; ValueError when one is outside
    1..L."""
    layers = cell["distill"]["layers"] or default_distill_layers(n_layers)
    bad = [i for i in layers if not 1 <= i <= n_layers]
    if bad:
        raise ValueError(f"structured.distill.layers {bad} out of range 1..{n_layers}")
    return layers


def config_problems(config: dict) -> list[str]:
    """Relations a schema cannot express, each naming its key: explicit distilled layers
    outside 1..L of a model whose depth is known, and targets that share a ``{sparsity}``
    name (so two targets would write one cell)."""
    s = config.get("structured") or {}
    problems = []
    layers = (s.get("distill") or {}).get("layers") or []
    for name, spec in (config.get("models") or {}).items():
        n_layers = model_num_layers(spec)
        bad = [i for i in layers if n_layers is not None and not 1 <= i <= n_layers]
        if bad:
            problems.append(
                f"config.structured.distill.layers: {bad} out of range 1..{n_layers} "
                f"for model {name}"
            )
    names: dict[str, list] = {}
    for t in s.get("targets") or []:
        names.setdefault(sparsity_name(t), []).append(t)
    for name, ts in names.items():
        if len(ts) > 1:
            problems.append(f"config.structured.targets: {ts} share the cell name {name!r}")
    return problems


def teacher_computed(config_or_cell: dict) -> bool:
    """Whether the teacher states are computed in the cell (``structured.distill.teacher:
    computed``) rather than read from the training cache; takes the config or a cell slice."""
    s = config_or_cell.get("structured", config_or_cell)
    return (s.get("distill") or {}).get("teacher", "cached") == "computed"


def cache_needs(config: dict, model: str, split: str) -> dict:
    """What this model's structured cells read from its training cache: state 0 (the gated
    blocks' input) and, unless the teacher is computed in the cell
    (:func:`teacher_computed`), the distilled states (``distill.layers`` or about L/3, 2L/3,
    L)."""
    if "structured" not in config.get("outputs", []) or split != "training":
        return {}
    if teacher_computed(config):
        return {"states": [0]}
    layers = config["structured"]["distill"]["layers"]
    return {"states": [0, *(layers if layers else ["L/3", "2L/3", "L"])]}
