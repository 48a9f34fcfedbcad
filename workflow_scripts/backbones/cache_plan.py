"""What the hidden-state caches store, and their inputs and disk, as the DAG plans them.

Plan-only: Snakemake (``rules/backbones.smk``) and ``make plan`` import this module; no job
script does. It asks every stage of the grid (:mod:`workflow_scripts.grid`) what it reads
from a cache (``<stage>.plan.cache_needs``), so importing it from a job would put the whole
grid's plan into that job's planned code (:mod:`workflow_scripts.core.code` counts every
import, a function's too) and rerun the job whenever any stage's plan changed. What a job
needs at run time stays in :mod:`workflow_scripts.backbones.plan` (``resolve_states``,
``layer_fraction``, ``resolve_finetune``). Torch-free.
"""

from __future__ import annotations

from workflow_scripts import grid
from workflow_scripts.backbones.plan import (
    architecture,
    cache_clips,
    resolve_states,
    split_size,
)
from workflow_scripts.core import paths
from workflow_scripts.core.config import cell_json
from workflow_scripts.core.paths import RESULTS

#: The module whose function the cache job calls (loaded by name) when a store has
#: ``block_targets``: :func:`workflow_scripts.mimic.targets.block_target_states`. Planned into
#: those jobs' code only (:func:`cache_modules`), so a change to it reruns no other cache.
BLOCK_TARGETS_MODULE = "workflow_scripts.mimic.targets"


def cache_store(config: dict, model: str, split: str) -> dict:
    """What one model's cache of one split stores: ``states`` (``"all"`` or indices/tokens),
    whether the feature projection is kept and, only when some are asked for,
    ``block_targets``: the depth-2 mimickers' intermediate targets that come from the
    similarity blocks (specs ``{"depth", "metric", "pick", "fallback"}``, as the mimic cells'
    ``targets`` slice). Those layers are known only once the similarity stage has run, so the
    cache job reads the blocks tables (:func:`cache_inputs`) and stores the layers the cells
    will pick (:func:`workflow_scripts.mimic.targets.block_target_states`), not every state.

    Validation keeps every state (similarity needs all pairs; mimicker and pruning scores
    select on it); training and testing keep the union of what the enabled stages ask for
    (``<stage>.plan.cache_needs``), plus state L (the head's reference). Pre-LN models also
    store ``final`` (what the head reads)."""
    if split == "validation":
        return {"states": "all", "feature_projection": True}
    states: set | str = {"L"}
    fp = False
    block_targets: list[dict] = []
    for stage in grid.STAGES:
        needs_of = getattr(grid.plan(stage), "cache_needs", None)
        needs = needs_of(config, model, split) if needs_of else {}
        fp = fp or bool(needs.get("feature_projection"))
        for spec in needs.get("block_targets", []):
            if spec not in block_targets:
                block_targets.append(dict(spec))
        wanted = needs.get("states", [])
        if wanted == "all" or states == "all":
            states = "all"
        else:
            states |= set(wanted)
    order = sorted(states, key=lambda s: (isinstance(s, str), str(s) if isinstance(s, str) else s))
    store = {"states": states if states == "all" else order, "feature_projection": fp}
    if block_targets and states != "all":
        store["block_targets"] = sorted(block_targets, key=cell_json)
    return store


def cache_slice(config: dict, model: str, split: str) -> dict:
    """Hidden-state cache slice: which split, how many clips (``backbones.plan.cache_clips``:
    the testing split's cache holds the evaluation set, ``evaluation.test_clips``), batch
    size, what is stored (:func:`cache_store`). Each slice holds only its own count, so
    changing one never reruns the other splits' caches."""
    return {"split": split, "clips": cache_clips(config, split),
            "batch_size": config["cache"]["batch_size"],
            "store": cache_store(config, model, split)}  # fmt: skip


def cache_inputs(config: dict, results: str = RESULTS, *, model: str, split: str) -> dict:
    """The fine-tuned model and the manifest; for a store with ``block_targets``, also the
    model's blocks table of each metric they name (``blocks_{metric}``:
    ``blocks/{model}/{metric}.csv``, what the mimic cells read), so that the cache stores the
    target layers the cells will pick."""
    inputs = {
        "model": paths.path("finetuned", results, model=model),
        "manifest": paths.path("manifest", results),
    }
    for spec in cache_store(config, model, split).get("block_targets", []):
        metric = spec["metric"]
        inputs[f"blocks_{metric}"] = paths.path("model_groups", results, model=model,
                                                metric=metric)  # fmt: skip
    return inputs


def cache_modules(config: dict, *, model: str, split: str) -> list[str]:
    """The modules a cache job loads by name: the mimic targets' picker, only for a store with
    ``block_targets`` (:data:`BLOCK_TARGETS_MODULE`)."""
    return [BLOCK_TARGETS_MODULE] if cache_store(config, model, split).get("block_targets") else []


def stored_states(config: dict, model: str, split: str, store: dict | None = None) -> int:
    """How many hidden states one cache stores (the feature projection and ``final`` not
    counted): the resolved ``states``, plus one per intermediate layer of each
    ``block_targets`` spec (depth - 1). An upper bound: a picked layer that another stage also
    stores (say L/3) is stored once, so the file can be one state smaller per spec. ``store``:
    :func:`cache_store` when the caller has it already."""
    from workflow_scripts.core import sizes

    store = store or cache_store(config, model, split)
    layers = sizes.model_dims(config["models"][model])["layers"]
    picked = sum(int(s["depth"]) - 1 for s in store.get("block_targets", []))
    return len(resolve_states(store["states"], layers)) + picked


def cache_bytes(config: dict, model: str, split: str, results: str = RESULTS) -> int:
    """Predicted size of one model's cache file of one split (what ``make plan`` reports and
    the cache job's ``disk_mb`` asks for); for a store with ``block_targets`` an upper bound
    by at most one state per spec (:func:`stored_states`)."""
    from workflow_scripts.core import sizes

    dims = sizes.model_dims(config["models"][model])
    store = cache_store(config, model, split)
    n = split_size(config, split, cache_clips(config, split), results)
    final = bool(architecture(config, model).get("do_stable_layer_norm"))
    return sizes.cache_bytes(n, dims["frames"], dims["hidden"],
                             stored_states(config, model, split, store),
                             store["feature_projection"],
                             final)  # fmt: skip
