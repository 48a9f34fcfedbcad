"""The mimic grid (model x mimicker type x depth) for ``rules/mimic.smk``; torch-free.

A cell ``cells/mimic/{model}/{kind}-{depth}.parquet`` (+ ``.curves.parquet``) trains one
mimicker from the hidden-state caches (:func:`workflow_scripts.mimic.run.run_cell`): ``kind``
is ``linear`` or ``transformer`` with ``depth`` 1 or 2 (``config.mimic.types``), or the
``no_mimic-0`` baseline. This module knows which cells exist, what config slice each one
depends on, which files it reads, what the aggregation rule reads, and the config checks a
schema cannot express. Wildcards arrive as strings (``depth`` "1").
"""

from __future__ import annotations

import re

from workflow_scripts.core import paths
from workflow_scripts.core.config import model_hidden_size, model_num_layers
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.report.plan import accuracy_threshold

KINDS = ("linear", "transformer")
NO_MIMIC = "no_mimic"


# --------------------------------------------------------------------------------------------
# the grid and its files
# --------------------------------------------------------------------------------------------
def cell_name(kind: str, depth: int | str) -> str:
    """A cell's file stem and the summary's ``mimicker`` label: ``{kind}-{depth}``."""
    return f"{kind}-{int(depth)}"


def grid(config: dict) -> list[tuple[str, str, int]]:
    """(model, kind, depth) of every configured cell: per model the types in ``KINDS`` order,
    depths ascending, then ``no_mimic`` 0 when ``mimic.no_mimic``."""
    m = config["mimic"]
    kinds = [(k, d) for k in KINDS if k in m["types"] for d in sorted(m["types"][k]["depths"])]
    if m["no_mimic"]:
        kinds.append((NO_MIMIC, 0))
    return [(model, k, d) for model in config["models"] for k, d in kinds]


def cells(config: dict) -> list[dict[str, str]]:
    """The wildcards of every configured cell, in :func:`grid` order."""
    return [{"model": m, "kind": k, "depth": str(d)} for m, k, d in grid(config)]


def cell_paths(config: dict, results: str = RESULTS) -> list[str]:
    """Every cell's parquet."""
    return [paths.path("mimic_cell", results, **c) for c in cells(config)]


def curves_paths(config: dict, results: str = RESULTS) -> list[str]:
    """Every cell's training curves (``.curves.parquet``)."""
    return [paths.path("mimic_curves", results, **c) for c in cells(config)]


def wildcard_constraints(config: dict) -> dict[str, str]:
    """``kind``: the configured types (and ``no_mimic`` when on); ``depth``: digits."""
    m = config["mimic"]
    kinds = [k for k in KINDS if k in m["types"]] + ([NO_MIMIC] if m["no_mimic"] else [])
    return {"kind": "|".join(map(re.escape, kinds)) or "NO_KIND", "depth": "[0-9]+"}


def tables_slice(config: dict) -> dict:
    """The aggregation rule's slice: the list of cells it stacks and the accuracy threshold
    of the summary's ``meets_threshold`` (the overview's)."""
    return {"cells": grid(config), "threshold": accuracy_threshold(config)}


def tables_inputs(config: dict, results: str = RESULTS) -> dict[str, list[str]]:
    """What the aggregation rule reads: every cell and every cell's curves."""
    return {"cells": cell_paths(config, results), "curves": curves_paths(config, results)}


def targets(config: dict, results: str = RESULTS) -> list[str]:
    """What ``rule all`` builds for ``outputs: [mimic]``: every cell and the tables/charts."""
    return cell_paths(config, results) + list(paths.tables("mimic", results).values())


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


def uses_blocks(config: dict, model: str, kind: str, depth: int | str) -> bool:
    """Whether the cell's intermediate target comes from the similarity blocks (the model's own
    ``blocks/{model}/{metric}.csv``)."""
    t = config["mimic"]["targets"]
    return (
        kind != NO_MIMIC
        and int(depth) >= 2
        and model not in t["layers"]
        and t["metric"] is not None
    )


def layer_slice(type_config: dict) -> dict:
    """A mimicker type's settings that shape its layers: all but ``depths``, and
    ``conv_kernel`` only with ``positions: conv``."""
    return {k: v for k, v in type_config.items() if k != "depths"
            and not (k == "conv_kernel" and type_config.get("positions") != "conv")}  # fmt: skip


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
        s["layer"] = layer_slice(m["types"][kind])
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


def cell_inputs(
    config: dict, results: str = RESULTS, *, model: str, kind: str, depth: int | str
) -> dict[str, str]:
    """Files a cell reads: the fine-tuned model, its training, validation and testing caches
    (the testing cache holds the evaluation set; its clip paths give the raw test audio for
    timing and the end-to-end check), its baseline cell and the baseline's per-clip test
    predictions (the retained interval is paired with them), and that model's blocks
    (``blocks/{model}/{metric}.csv``) only when the intermediate target comes from the
    similarity blocks."""
    inputs = {
        "model": paths.path("finetuned", results, model=model),
        **{
            key: paths.path("cache", results, model=model, split=split)
            for key, split in (
                ("train_cache", "training"),
                ("val_cache", "validation"),
                ("test_cache", "testing"),
            )  # fmt: skip
        },
        "baseline": paths.path("baseline_cell", results, model=model),
        "baseline_predictions": paths.path("baseline_predictions", results, model=model),
    }
    if uses_blocks(config, model, kind, depth):
        metric = config["mimic"]["targets"]["metric"]
        inputs["blocks"] = paths.path("model_groups", results, model=model, metric=metric)
    return inputs


# --------------------------------------------------------------------------------------------
# config checks a schema cannot express
# --------------------------------------------------------------------------------------------
def _layer_problems(config: dict) -> list[str]:
    """Explicit target layers of unknown models or outside 1..L-1."""
    models = config.get("models") or {}
    layers = config["mimic"]["targets"]["layers"]
    problems = []
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
    return problems


def config_problems(config: dict) -> list[str]:
    """Relations between ``mimic`` and the rest of the config, each naming its key: explicit
    target layers of unknown models or out of 1..L-1, transformer heads that do not divide a
    model's hidden size, and (when ``mimic`` is in ``outputs``) a block metric that the
    similarity grid does not compute."""
    m = config["mimic"]
    problems = _layer_problems(config)
    heads = m["types"].get("transformer", {}).get("heads")
    if "transformer" in m["types"] and heads is not None:
        for name, spec in (config.get("models") or {}).items():
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


def cache_needs(config: dict, model: str, split: str) -> dict:
    """What this model's mimic cells read from its training and testing caches: the feature
    projection (every mimicker's input) and the teacher states of the targets (training: the
    last state, explicit or evenly spaced intermediate layers, and ``block_targets`` - a spec
    per way a depth-2 target is picked from the detected groups, which are not known before
    the similarity stage has run, so the cache job resolves them from the blocks tables,
    ``backbones.cache_plan.cache_store``) or the last state (testing: the head's reference
    accuracy). The validation cache stores everything anyway."""
    if "mimic" not in config.get("outputs", []) or split not in ("training", "testing"):
        return {}
    if split == "testing":
        return {"feature_projection": True, "states": ["L"]}
    states: set = set()
    block_targets: list[dict] = []
    for m, kind, depth in grid(config):
        if m != model or kind == NO_MIMIC:
            continue
        states.add("L")
        if depth < 2:
            continue
        if uses_blocks(config, model, kind, depth):
            spec = {"depth": depth, **cell_slice(config, model, kind, depth)["targets"]}
            if spec not in block_targets:
                block_targets.append(spec)
            continue
        explicit = config["mimic"]["targets"]["layers"].get(model)
        states.add(int(explicit) if explicit is not None else "L/2")
    needs = {"feature_projection": True, "states": sorted(states, key=str)}
    if block_targets:
        needs["block_targets"] = block_targets
    return needs


# --------------------------------------------------------------------------------------------
# disk
# --------------------------------------------------------------------------------------------
def mimicker_params(layer: dict, kind: str, depth: int, dim: int) -> int:
    """Parameters of a mimicker (``mimic.model.Mimicker``) of ``depth`` layers of ``kind`` at
    width ``dim`` with the type's settings ``layer`` (:func:`layer_slice`): a linear layer
    ``2 D h + 3 h + D`` (down, LayerNorm, up), a transformer layer ``4 D^2 + 2 D f + 9 D + f``
    (attention, feed-forward of width f, two LayerNorms), plus ``D (k + 1)`` for conv
    positions. 0 for ``no_mimic``."""
    if kind == NO_MIMIC or depth == 0:
        return 0
    if kind == "linear":
        h = int(layer.get("width", 64))
        per = 2 * dim * h + 3 * h + dim
    else:
        f = int(layer.get("ffn") or layer.get("width", 64))
        per = 4 * dim * dim + 2 * dim * f + 9 * dim + f
    pos = dim * (int(layer.get("conv_kernel", 16)) + 1) if layer.get("positions") == "conv" else 0
    return depth * per + pos


def export_bytes(config: dict, results: str = RESULTS, *, model: str, kind: str,
                 depth: int | str, **_wildcards) -> int:  # fmt: skip
    """Disk of a cell's exported mimicked model (the rule's ``disk_mb``): float32 weights of
    what the mimicked model runs - the CNN front end (weights, biases, norms), the feature
    projection, the mimicker (:func:`mimicker_params`) and the head - plus its small JSON
    files. Not the fine-tuned model's size: the export leaves the transformer stack out
    (``mimic.model.MimickedModel``). That estimate asked 4 bytes per parameter of the whole
    model, 18.3 GB for the paper grid's 25 cells, when the default grid's exports are 0.9-1.3
    MB against the 9.4 MB it asked per cell (hubert-small, 128-wide)."""
    from workflow_scripts.backbones.plan import architecture
    from workflow_scripts.core import resources, sizes
    from workflow_scripts.data.plan import words

    spec = config["models"][model]
    arch = architecture(config, model)
    conv = resources.SMALL_CONV if "pretrain" in spec else resources.REAL_CONV
    conv_dim = list(arch.get("conv_dim") or conv["conv_dim"])
    kernel = list(arch.get("conv_kernel") or conv["conv_kernel"])
    dim = sizes.model_dims(spec)["hidden"]
    front, c_in = 0, 1
    for c_out, k in zip(conv_dim, kernel, strict=False):
        front += c_in * c_out * k + 3 * c_out
        c_in = c_out
    front += 2 * c_in + c_in * dim + dim
    proj = int(arch.get("classifier_proj_size") or 256)
    labels = len(words(config))
    head = dim * proj + proj + proj * labels + labels
    layer = layer_slice(config["mimic"]["types"].get(kind, {}))
    params = front + head + mimicker_params(layer, kind, int(depth), dim)
    return 4 * params + 100_000
