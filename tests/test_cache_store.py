"""What the training-split cache stores (issue #27, "the paper grid fits a 1 TB quota"): the
mimickers' intermediate targets that come from the similarity blocks are resolved by the cache
job from the blocks tables (a dependency of that job), so the cache stores the feature
projection, the last state, the picked targets and the structured distillation layers instead
of every state - and a mimic cell computed from it is identical to one computed from an
all-states cache. With ``structured.distill.teacher: computed`` the structured cells compute
their teacher states from the cached block-0 input, and the cache stores only that input."""

from __future__ import annotations

import copy

import mimic_tiny
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import ROOT, default_config

from workflow_scripts import grid
from workflow_scripts.backbones import cache_plan
from workflow_scripts.backbones.cachefile import CacheFile
from workflow_scripts.backbones.run import run_cache
from workflow_scripts.core.code import planned_code
from workflow_scripts.mimic import plan as mplan
from workflow_scripts.mimic.targets import block_target_states
from workflow_scripts.resource_plan import load_config
from workflow_scripts.structured import plan as splan

BLOCKS = {"depth": 2, "metric": "cka_linear", "pick": "last", "fallback": "even"}


# ----------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------
def test_training_cache_stores_the_picked_block_target_not_every_state():
    cfg = grid.validate(default_config())
    model = next(iter(cfg["models"]))
    store = cache_plan.cache_store(cfg, model, "training")
    assert store == {"states": [0, "2L/3", "L", "L/3"], "feature_projection": True,
                     "block_targets": [BLOCKS]}  # fmt: skip
    # the cache job reads the model's blocks table and loads the picker by name
    inputs = cache_plan.cache_inputs(cfg, model=model, split="training")
    assert inputs["blocks_cka_linear"] == f"results/blocks/{model}/cka_linear.csv"
    assert cache_plan.cache_modules(cfg, model=model, split="training") == [
        cache_plan.BLOCK_TARGETS_MODULE
    ]
    # the other splits: no blocks, no picker, their slices as before
    for split in ("validation", "testing"):
        assert "block_targets" not in cache_plan.cache_store(cfg, model, split)
        assert set(cache_plan.cache_inputs(cfg, model=model, split=split)) == {"model", "manifest"}
        assert cache_plan.cache_modules(cfg, model=model, split=split) == []
    # one state per picked target counted (an upper bound: it may be one of L/3, 2L/3)
    # the shipped small backbones have 10 layers: 0, L/3 = 3, 2L/3 = 7, L and the target
    assert cache_plan.stored_states(cfg, model, "training") == len({0, 3, 7, 10}) + 1 < 11
    # fixed targets: nothing to resolve, no dependency on the similarity stage
    fixed = copy.deepcopy(cfg)
    fixed["mimic"]["targets"]["metric"] = None
    store = cache_plan.cache_store(fixed, model, "training")
    assert "block_targets" not in store and "L/2" in store["states"]
    assert "blocks_cka_linear" not in cache_plan.cache_inputs(fixed, model=model, split="training")


def test_paper_training_caches_store_four_tensors_not_every_state():
    """config/paper.yaml: the feature projection, state 0 (the structured cells' input),
    state L and the picked target, as the structured teacher is computed in the cells."""
    cfg = load_config(["config/paper.yaml"], ROOT)
    for model in cfg["models"]:
        store = cache_plan.cache_store(cfg, model, "training")
        assert store == {"states": [0, "L"], "feature_projection": True,
                         "block_targets": [BLOCKS]}  # fmt: skip
        assert cache_plan.stored_states(cfg, model, "training") == 3


def test_block_target_states_are_what_the_mimic_cells_pick():
    blocks = pd.DataFrame(
        [("m", "cka_linear", 0, 4, 13), ("m", "cka_linear", 5, 12, 13)],
        columns=["model", "metric", "first_state", "last_state", "n_states"],
    )
    assert block_target_states([BLOCKS], 12, "m", blocks) == [4]
    assert block_target_states([{**BLOCKS, "pick": "first"}], 12, "m", blocks) == [1]
    one = blocks.iloc[[1]].assign(first_state=0)  # one block to L: the even fallback, 6
    assert block_target_states([BLOCKS], 12, "m", one) == [6]
    # no target the cell could use (fallback "error"; another model): nothing stored, the
    # cell stops with the error itself
    assert block_target_states([{**BLOCKS, "fallback": "error"}], 12, "m", one) == []
    assert block_target_states([BLOCKS], 12, "other", blocks) == []
    with pytest.raises(ValueError, match="blocks table"):
        block_target_states([BLOCKS], 12, "m", None)
    assert block_target_states([], 12, "m", None) == []


def test_job_scripts_plan_no_plan_only_module():
    """grid.py and backbones/cache_plan.py (which asks every stage's plan) are in no job's
    planned code: a change to any stage's plan reruns no fine-tuning or cache job."""
    scripts = sorted(p.stem for p in (ROOT / "workflow_scripts/scripts").glob("*.py")
                     if p.stem != "__init__")  # fmt: skip
    for script in scripts:
        code = planned_code(script)
        assert "workflow_scripts/grid.py" not in code, script
        assert "workflow_scripts/backbones/cache_plan.py" not in code, script
    # the mimic targets' picker only in the caches that store block targets
    assert "workflow_scripts/mimic/targets.py" not in planned_code("hidden_cache")
    assert "workflow_scripts/mimic/targets.py" not in planned_code("finetune")
    with_picker = planned_code("hidden_cache", [cache_plan.BLOCK_TARGETS_MODULE])
    assert "workflow_scripts/mimic/targets.py" in with_picker


def test_structured_teacher_setting_enters_only_when_computed():
    cfg = grid.validate(default_config())
    model = next(iter(cfg["models"]))
    cell = splan.cell_slice(cfg, model=model, sparsity="0.3")
    assert "teacher" not in cell["distill"] and not splan.teacher_computed(cell)
    assert splan.cache_needs(cfg, model, "training")["states"] == [0, "L/3", "2L/3", "L"]
    cfg["structured"]["distill"]["teacher"] = "computed"
    cell = splan.cell_slice(cfg, model=model, sparsity="0.3")
    assert cell["distill"]["teacher"] == "computed" and splan.teacher_computed(cell)
    assert splan.cache_needs(cfg, model, "training") == {"states": [0]}


def test_mimic_export_estimate_counts_what_the_export_holds():
    """A shipped backbone's exports in the default grid (hubert-small): front end 198,208 +
    feature projection 16,768 + head 10,531 parameters, + the mimicker (linear-2: 33,408;
    transformer-1 with conv positions: 85,312), float32 - not the whole fine-tuned model."""
    raw = default_config()
    raw["models"]["hubert-small"] = {"hf": "models/hubert-small"}  # a shipped backbone
    cfg = grid.validate(raw)
    got = {k: mplan.export_bytes(cfg, model="hubert-small", kind=k, depth=d) - 100_000
           for k, d in (("no_mimic", 0), ("linear", 2), ("transformer", 1))}  # fmt: skip
    base = 198_208 + 16_768 + 10_531
    assert got == {"no_mimic": 4 * base, "linear": 4 * (base + 33_408),
                   "transformer": 4 * (base + 85_312)}  # fmt: skip


# ----------------------------------------------------------------------------------------
# the mimic cells: identical from a reduced and an all-states cache
# ----------------------------------------------------------------------------------------
def _caches(world: dict, cfg: dict, out, reduced: bool) -> dict[str, str]:
    """The three caches of the tiny world written by the cache job's code (``run_cache``):
    training as planned (``reduced``) or with every state."""
    blocks = pd.read_csv(world["blocks"])
    paths = {}
    for split, key in (("training", "train_cache"), ("validation", "val_cache"),
                       ("testing", "test_cache")):  # fmt: skip
        slice_ = cache_plan.cache_slice(cfg, mimic_tiny.MODEL, split)
        if split == "training" and not reduced:
            slice_["store"] = {"states": "all", "feature_projection": True}
        store = slice_["store"]
        paths[key] = str(out / f"{split}.safetensors")

        def picked(n, store=store):
            return block_target_states(store.get("block_targets", []), n, mimic_tiny.MODEL, blocks)

        run_cache(slice_, world["model"], world["manifest"], world["root"], paths[key], {},
                  lambda _m: None, picked)  # fmt: skip
    return paths


TIMING = ("seconds", "latency", "_ms", "speedup", "timing", "threads", "clock")


@pytest.mark.parametrize("stable", [False, True])
def test_mimic_cell_is_identical_from_a_reduced_and_an_all_states_cache(tmp_path, monkeypatch,
                                                                        stable):  # fmt: skip
    """A depth-2 mimicker whose target comes from the blocks, on the default grid's stages
    (mimic and structured: the cache keeps 0, L/3, 2L/3, L and the picked layer of a 6-layer
    model): the same target, the same float16 rows, hence the same cell row (timings aside),
    curves, per-clip predictions and exported weights."""
    from safetensors.numpy import load_file

    from workflow_scripts.mimic.run import run_cell

    monkeypatch.setitem(mimic_tiny.PRETRAIN, "layers", 6)
    world = mimic_tiny.build_world(tmp_path / "world", stable=stable)
    blocks = pd.DataFrame([(mimic_tiny.MODEL, "cka_linear", 0, 3), (mimic_tiny.MODEL,
                           "cka_linear", 4, 6)], columns=["model", "metric", "first_state",
                                                          "last_state"])  # fmt: skip
    blocks.assign(n_states=7).to_csv(world["blocks"], index=False)
    cfg = mimic_tiny.tiny_config()
    cfg["outputs"] = ["mimic", "structured"]
    results = {}
    for reduced in (True, False):
        d = tmp_path / ("reduced" if reduced else "all")
        inputs = {**world, **_caches(world, cfg, d, reduced)}
        states = CacheFile(inputs["train_cache"]).states
        assert states == ([0, 2, 3, 4, 6] if reduced else list(range(7))), states
        torch.manual_seed(0)
        cell = mplan.cell_slice(cfg, mimic_tiny.MODEL, "linear", 2)
        export = str(d / "export")
        row, curves, preds = run_cell(inputs, cell, world["root"], device="cpu",
                                      log=lambda *_: None, export_dir=export)  # fmt: skip
        weights = load_file(str(d / "export/mimicked_model.safetensors"))
        results[reduced] = (row, curves, preds, weights)
    (row, curves, preds, weights), (row_all, curves_all, preds_all, weights_all) = (
        results[True], results[False])  # fmt: skip
    assert list(row.target_layers[0]) == [3, 6]
    keep = [c for c in row.columns if not any(t in c for t in TIMING)]
    assert {"accuracy", "val_accuracy", "stage1_best_val_loss", "target_layers",
            "raw_audio_check_max_abs_diff"} <= set(keep)  # fmt: skip
    pd.testing.assert_frame_equal(row[keep], row_all[keep])
    curves_keep = [c for c in curves.columns if not any(t in c for t in TIMING)]
    pd.testing.assert_frame_equal(curves[curves_keep], curves_all[curves_keep])
    pd.testing.assert_frame_equal(preds, preds_all)
    assert weights.keys() == weights_all.keys()
    for k, v in weights.items():
        np.testing.assert_array_equal(v, weights_all[k])


# ----------------------------------------------------------------------------------------
# the structured cells' computed teacher
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, stable", [("hubert", False), ("hubert", True), ("wavlm", True)])
def test_computed_teacher_gives_the_cached_teacher_states(tmp_path, arch, stable):
    """From the cached block-0 input, the frozen blocks give the cached states to float16
    rounding (the input is the rounded one), the last included (before the final LayerNorm
    of pre-LN models); distillation from them follows the cached run closely."""
    from test_structured_stream import L, training_cache

    from workflow_scripts.structured.plan import default_distill_layers
    from workflow_scripts.structured.run import training_views
    from workflow_scripts.structured.stack import GatedStack
    from workflow_scripts.structured.train import ComputedTeacher, train_gates

    model, path = training_cache(tmp_path, arch, stable, n=8)
    layers = default_distill_layers(L)
    x0, cached = training_views(str(path), layers, None)
    teacher = ComputedTeacher(model, layers)
    assert teacher.layers == layers and not any(p.requires_grad for p in teacher.parameters())
    x = torch.from_numpy(x0[:].astype(np.float32))
    got = teacher(x)
    for i in layers:
        torch.testing.assert_close(got[i], torch.from_numpy(cached[i][:].astype(np.float32)),
                                   rtol=0, atol=0.02)  # fmt: skip
        assert got[i].dtype == torch.float32 and bool((got[i] == got[i].half().float()).all())
    hist = []
    for targets in (cached, teacher):
        torch.manual_seed(0)
        stack = GatedStack.from_model(model, gates={"heads": True, "ffn_units": True})
        hist.append(train_gates(stack, x0, targets, 0.3, steps=4, batch_size=4, seed=1))
    for a, b in zip(*hist, strict=True):
        assert a["distill"] == pytest.approx(b["distill"], rel=0.02, abs=0.02)
        assert a["expected_sparsity"] == pytest.approx(b["expected_sparsity"], abs=1e-3)


def test_paper_config_file_sets_the_computed_teacher():
    raw = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    assert raw["structured"]["distill"]["teacher"] == "computed"
