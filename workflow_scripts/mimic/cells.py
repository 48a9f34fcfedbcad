"""The mimic grid (model x mimicker type x depth) as pure functions for ``rules/mimic.smk``.

A cell ``results/cells/mimic/{model}/{kind}-{depth}.parquet`` (+ ``.curves.parquet``) trains
one mimicker (:mod:`workflow_scripts.mimic.core`) from the hidden-state caches: ``kind`` is
``linear`` or ``transformer`` with ``depth`` 1 or 2 (``config.mimic.types``), or the
``no_mimic-0`` baseline. This module knows which cells exist, what config slice each one
depends on (its rule ``params``), which layers a depth-2 mimicker is trained to predict, and
how the cells are summarised. It imports neither torch nor snakemake at module level (only
:func:`target_layers` and :func:`frozen_outputs` load torch, when called).
"""

from __future__ import annotations

import math

import pandas as pd

from workflow_scripts.core.config import ConfigError, model_hidden_size, model_num_layers
from workflow_scripts.core.provenance import canonical_json

KINDS = ("linear", "transformer")
NO_MIMIC = "no_mimic"
CELL_DIR = "cells/mimic"
TABLES = ("tables/mimic.parquet", "tables/mimic_summary.csv", "tables/mimic_summary.md")
CHARTS = ("charts/mimic_tradeoff", "charts/mimic_curves")


# --------------------------------------------------------------------------------------------
# the grid and its files
# --------------------------------------------------------------------------------------------
def cell_name(kind: str, depth: int) -> str:
    return f"{kind}-{int(depth)}"


def grid(config: dict) -> list[tuple[str, str, int]]:
    """(model, kind, depth) of every configured cell: per model the types in ``KINDS`` order,
    depths ascending, then ``no_mimic`` 0 when ``mimic.no_mimic``."""
    m = config["mimic"]
    kinds = [(k, d) for k in KINDS if k in m["types"] for d in sorted(m["types"][k]["depths"])]
    if m["no_mimic"]:
        kinds.append((NO_MIMIC, 0))
    return [(model, k, d) for model in config["models"] for k, d in kinds]


def cell_path(results: str, model: str, kind: str, depth: int, curves: bool = False) -> str:
    suffix = ".curves.parquet" if curves else ".parquet"
    return f"{results}/{CELL_DIR}/{model}/{cell_name(kind, depth)}{suffix}"


def cell_paths(config: dict, results: str, curves: bool = False) -> list[str]:
    return [cell_path(results, *c, curves=curves) for c in grid(config)]


def table_paths(results: str) -> dict[str, str]:
    """The aggregation's outputs by role."""
    return {
        "table": f"{results}/{TABLES[0]}",
        "summary_csv": f"{results}/{TABLES[1]}",
        "summary_md": f"{results}/{TABLES[2]}",
        "tradeoff_html": f"{results}/{CHARTS[0]}.html",
        "tradeoff_png": f"{results}/{CHARTS[0]}.png",
        "curves_html": f"{results}/{CHARTS[1]}.html",
        "curves_png": f"{results}/{CHARTS[1]}.png",
    }


def targets(config: dict, results: str) -> list[str]:
    """What ``rule all`` builds for ``outputs: [mimic]``: every cell and the tables/charts."""
    return cell_paths(config, results) + list(table_paths(results).values())


# --------------------------------------------------------------------------------------------
# per-cell config slice and inputs
# --------------------------------------------------------------------------------------------
def _check_cell(config: dict, kind: str, depth: int) -> None:
    types = config["mimic"]["types"]
    if kind == NO_MIMIC:
        if depth != 0:
            raise ValueError(f"the no_mimic baseline has depth 0, got {NO_MIMIC}-{depth}")
    elif kind not in types:
        raise ValueError(
            f"mimicker type {kind!r} is not configured (config.mimic.types has {sorted(types)})"
        )
    elif depth not in (1, 2):
        raise ValueError(f"a {kind} mimicker has depth 1 or 2, got {depth}")


def uses_blocks(config: dict, model: str, kind: str, depth: int) -> bool:
    """Whether the cell's intermediate target comes from the similarity blocks (the model's own
    ``results/blocks/{model}/{metric}.csv``)."""
    t = config["mimic"]["targets"]
    return (
        kind != NO_MIMIC
        and int(depth) >= 2
        and model not in t["layers"]
        and t["metric"] is not None
    )


def cell_slice(config: dict, model: str, kind: str, depth: int | str) -> dict:
    """The config one cell depends on, and nothing else: its type's own sizes (not the other
    type's), its training stages (no stage 1 for ``no_mimic``), the target-layer settings only
    for depth 2 (only this model's explicit layer), latency settings, seed. (Clip counts are
    those of the input caches.)"""
    depth = int(depth)
    _check_cell(config, kind, depth)
    m = config["mimic"]
    s: dict = {
        "model": model,
        "kind": kind,
        "depth": depth,
        "seed": m["seed"],
        "latency": dict(m["latency"]),
    }
    stage2 = dict(m["stage2"])
    if kind == NO_MIMIC:  # only the head trains; the freeze flags do not apply
        stage2 = {k: stage2[k] for k in ("epochs", "lr", "batch_size")}
    else:
        s["layer"] = {k: v for k, v in m["types"][kind].items() if k != "depths"}
        s["stage1"] = dict(m["stage1"])
    s["stage2"] = stage2
    if kind != NO_MIMIC and depth >= 2:
        t = m["targets"]
        if model in t["layers"]:
            s["targets"] = {"layer": int(t["layers"][model])}
        elif t["metric"] is None:
            s["targets"] = {"metric": None}
        else:
            s["targets"] = {k: t[k] for k in ("metric", "pick", "fallback")}
    return s


def cell_json(config: dict, model: str, kind: str, depth: int | str) -> str:
    """Canonical JSON of :func:`cell_slice` (a rule's ``params.cell``)."""
    return canonical_json(cell_slice(config, model, kind, depth))


def cell_inputs(config: dict, results: str, model: str, kind: str, depth: int | str) -> dict:
    """Files a cell reads: the fine-tuned model, its training, validation and testing caches,
    the manifest (raw test audio for timing and the end-to-end check), its baseline cell, and
    that model's blocks (results/blocks/{model}/{metric}.csv) only when the intermediate target
    comes from the similarity blocks."""
    inputs = {
        "model": f"{results}/finetuned/{model}",
        "train_cache": f"{results}/cache/{model}/training.safetensors",
        "val_cache": f"{results}/cache/{model}/validation.safetensors",
        "test_cache": f"{results}/cache/{model}/testing.safetensors",
        "manifest": f"{results}/data/manifest.parquet",
        "baseline": f"{results}/cells/baseline/{model}.parquet",
    }
    if uses_blocks(config, model, kind, int(depth)):
        metric = (config["mimic"].get("targets") or {}).get("metric")
        inputs["blocks"] = f"{results}/blocks/{model}/{metric}.csv"
    return inputs


# --------------------------------------------------------------------------------------------
# config checks a schema cannot express
# --------------------------------------------------------------------------------------------
def config_problems(config: dict) -> list[str]:
    """Relations between ``mimic`` and the rest of the config, each naming its key: explicit
    target layers of unknown models or out of 1..L-1, transformer heads that do not divide a
    model's hidden size, and (when ``mimic`` is in ``outputs``) a block metric that the
    similarity grid does not compute."""
    m = config["mimic"]
    models = config.get("models") or {}
    problems = []
    layers = m["targets"]["layers"]
    unknown = sorted(set(layers) - set(models))
    if unknown:
        problems.append(
            f"config.mimic.targets.layers: unknown model(s) {unknown}; models: {sorted(models)}"
        )
    for name, layer in sorted(layers.items()):
        n = model_num_layers(models[name]) if name in models else None
        if n is not None and not 1 <= layer <= n - 1:
            problems.append(
                f"config.mimic.targets.layers.{name}: layer {layer} out of range 1..{n - 1} "
                f"(hidden-state index; the last layer {n} is always the second target)"
            )
    heads = m["types"].get("transformer", {}).get("heads")
    if "transformer" in m["types"] and heads is not None:
        for name, spec in models.items():
            dim = model_hidden_size(spec)
            if dim is not None and dim % heads:
                problems.append(
                    f"config.mimic.types.transformer.heads: {heads} does not divide the hidden "
                    f"size {dim} of model {name} (use a divisor or null for gcd(D, 8))"
                )
    metric = m["targets"]["metric"]
    sim_metrics = sorted((config.get("similarity") or {}).get("metrics") or {})
    needs = any(uses_blocks(config, *c) for c in grid(config))
    if "mimic" in config.get("outputs", []) and needs and metric not in sim_metrics:
        problems.append(
            f"config.mimic.targets.metric: {metric!r} is not computed by similarity.metrics "
            f"{sim_metrics}; add it there, pick one of those, or use null (evenly spaced)"
        )
    return problems


def check_config(config: dict) -> None:
    problems = config_problems(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------
# target layers
# --------------------------------------------------------------------------------------------
def target_layers(
    depth: int, n_layers: int, model: str, targets_cfg: dict | None, blocks=None
) -> tuple[list[int], str]:
    """(hidden-state indices the mimicker's outputs predict, how they were chosen).

    depth 0/1: ``[n_layers]``. depth 2: ``targets_cfg`` is the cell's ``targets`` slice:
    ``{"layer": i}`` (explicit), ``{"metric": None}`` (evenly spaced) or ``{"metric", "pick",
    "fallback"}`` with ``blocks`` the blocks table (columns model, metric, first_layer,
    last_layer, n_layers), from which :func:`mimic.choose_targets` takes a layer of the first
    block before the last layer. When the blocks have none there, ``fallback`` "even" uses the
    evenly spaced layer (and says so in the returned source), "error" raises.
    """
    from workflow_scripts.mimic.core import choose_targets

    if depth <= 1:
        return choose_targets(depth, n_layers), "last"
    t = targets_cfg or {"metric": None}
    if "layer" in t:
        return choose_targets(depth, n_layers, explicit=[t["layer"], n_layers]), "explicit"
    metric = t.get("metric")
    if metric is None:
        return choose_targets(depth, n_layers), "even"
    if blocks is None:
        raise ValueError("targets from similarity blocks need the blocks table")
    rows = blocks[(blocks.model == model) & (blocks.metric == metric)]
    if rows.empty:
        raise ValueError(
            f"blocks.csv has no blocks of model {model!r} for metric {metric!r} (add the "
            "metric to similarity.metrics, or set mimic.targets.metric / mimic.targets.layers)"
        )
    if "n_layers" in rows and int(rows.n_layers.iloc[0]) != n_layers + 1:
        raise ValueError(
            f"blocks.csv of model {model!r} covers {int(rows.n_layers.iloc[0])} hidden states, "
            f"the model has {n_layers + 1}: the blocks table is stale"
        )
    spans = sorted(zip(rows.first_layer.astype(int), rows.last_layer.astype(int), strict=True))
    pick = t.get("pick", "last")
    try:
        return choose_targets(depth, n_layers, spans, pick=pick), f"blocks:{metric}:{pick}"
    except ValueError as err:
        if t.get("fallback", "even") == "error":
            raise
        even = choose_targets(depth, n_layers)
        return even, f"even (fallback: {metric} blocks {[list(s) for s in spans]}: {err})"


def frozen_outputs(mimicker, inputs, batch_size: int = 128, device="cpu"):
    """The eval-mode mimicker's last output ``(N, T, D)`` float32 for every row of ``inputs``
    (a numpy/memmap array of any float dtype), computed once: stage 2 with a frozen mimicker
    can then train the head on these with an identity mimicker, exactly as if the mimicker ran
    in every epoch (same casts, same autocast; it is deterministic in eval mode)."""
    import numpy as np
    import torch

    from workflow_scripts.backbones.finetune import autocast

    device = torch.device(device)
    mimicker.to(device).eval()
    out = np.empty(inputs.shape, dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(inputs), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(inputs[s : s + batch_size]))
            with autocast(device):
                y = mimicker(xb.to(device=device, dtype=torch.float32))[-1]
            out[s : s + len(xb)] = y.float().cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
SUMMARY_COLUMNS = [
    "model", "mimicker", "kind", "depth", "target_layers", "accuracy", "ci_lo", "ci_hi",
    "backbone_accuracy", "accuracy_retained_pct", "retains_95pct", "stack_params",
    "mimicker_params", "stack_param_reduction_pct", "model_params", "mimicked_model_params",
    "model_param_reduction_pct", "stack_ms", "mimicker_ms", "stack_latency_reduction_pct",
    "model_ms", "mimicked_model_ms", "model_latency_reduction_pct", "latency_batch_size",
    "device",
]  # fmt: skip


def _pct_reduction(original: pd.Series, reduced: pd.Series) -> pd.Series:
    orig = original.astype(float)
    return (100.0 * (1.0 - reduced.astype(float) / orig)).where(orig > 0)


def _order(df: pd.DataFrame) -> pd.Series:
    rank = {k: i for i, k in enumerate((*KINDS, NO_MIMIC))}
    return df.kind.map(rank).fillna(len(rank)) * 100 + df.depth.astype(int)


def summary_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per model and mimicker from the stacked cells: test accuracy (with CI), the
    accuracy retained in % of the unpruned backbone's test accuracy, the parameter reduction
    of the replaced stack and of the whole model, and the latency reduction of the stack (vs
    the mimicker) and of the full model (vs the mimicked model), all recomputed from the raw
    counts and medians. Rows: models in order of appearance, then linear, transformer,
    no_mimic, by depth."""
    if cells.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    d = cells.copy()
    d["mimicker"] = [cell_name(k, n) for k, n in zip(d.kind, d.depth, strict=True)]
    d["target_layers"] = [",".join(map(str, t)) for t in d.target_layers]
    d["accuracy_retained_pct"] = 100.0 * d.accuracy / d.backbone_accuracy
    d["retains_95pct"] = d.accuracy_retained_pct >= 95.0
    d["latency_batch_size"] = d.batch_size  # cost_report's timing batch
    d["stack_param_reduction_pct"] = _pct_reduction(d.stack_params, d.mimicker_params)
    d["model_param_reduction_pct"] = _pct_reduction(d.model_params, d.mimicked_model_params)
    d["stack_latency_reduction_pct"] = _pct_reduction(d.stack_ms, d.mimicker_ms)
    d["model_latency_reduction_pct"] = _pct_reduction(d.model_ms, d.mimicked_model_ms)
    models = list(dict.fromkeys(d.model))
    d["_m"] = d.model.map({m: i for i, m in enumerate(models)})
    d["_k"] = _order(d)
    d = d.sort_values(["_m", "_k"], kind="stable").reset_index(drop=True)
    return d[SUMMARY_COLUMNS]


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured markdown table (floats rounded to ``digits``), no extra packages."""

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"


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
