"""One mimic cell with tiny models (workflow_scripts.mimic.run.run_cell and the rule adapter
scripts/mimic_cell.py): the no_mimic baseline, a depth-2 mimicker whose intermediate target comes
from a blocks table, and stage 2 with a frozen (or trained) mimicker, on a tiny world of real wav
clips, a saved classifier and its hidden-state caches (tests/mimic_tiny.py)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mimic_tiny import MODEL, PRETRAIN, SIZES, build_world, tiny_config

from workflow_scripts.core.config import cell_json
from workflow_scripts.mimic import plan
from workflow_scripts.mimic import run as mimic_run

ROOT = Path(__file__).resolve().parent.parent
QUIET = lambda *_: None  # noqa: E731
CELL_COLUMNS = [
    "model", "kind", "depth", "target_layers", "target_source", "last_target", "n_layers",
    "hidden_size",
    "accuracy", "ci_lo", "ci_hi", "n", "per_class_accuracy", "eval_clips", "backbone_accuracy",
    "backbone_ci_lo", "backbone_ci_hi", "backbone_accuracy_source", "accuracy_retained",
    "retained_lo", "retained_hi", "val_accuracy", "train_clips", "val_clips",
    "raw_audio_check_clips",
    "raw_audio_check_max_abs_diff", "raw_audio_check_agreement", "stage1_best_epoch",
    "stage1_best_val_loss", "stage1_seconds", "stage2_best_epoch", "stage2_best_val_accuracy",
    "stage2_seconds", "freeze_mimicker", "freeze_head", "stack_params", "mimicker_params",
    "model_params", "mimicked_model_params", "stack_param_reduction_pct",
    "model_param_reduction_pct", "stack_ms", "mimicker_ms", "model_ms", "mimicked_model_ms",
    "stack_ms_per_sample", "mimicker_ms_per_sample", "model_ms_per_sample",
    "mimicked_model_ms_per_sample", "stack_latency_reduction_pct", "model_latency_reduction_pct",
    "speedup", "speedup_lo", "speedup_hi", "stack_speedup", "stack_speedup_lo",
    "stack_speedup_hi", "batch_size", "frames", "warmup", "repeats", "timing_precision",
    "timing_device", "timing_clock", "latency_threads", "device",
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("mimic_world"))


def run_tiny(world, kind, depth, blocks=None, **mimic):
    """run_cell on the tiny world for one cell of ``tiny_config(**mimic)``: (slice, cell row,
    curves)."""
    cfg = tiny_config(**mimic)
    sl = plan.cell_slice(cfg, MODEL, kind, str(depth))
    ins = plan.cell_inputs(cfg, "R", model=MODEL, kind=kind, depth=str(depth))
    inputs = {k: world[k] for k in ins}
    if blocks is not None:
        inputs["blocks"] = blocks
    cell, curves, _ = mimic_run.run_cell(inputs, sl, world["root"], "cpu", QUIET)
    assert list(cell.columns) == CELL_COLUMNS and len(cell) == 1
    return sl, cell.iloc[0], curves


def fits(world, targets: list, layers: list) -> bool:
    """Whether stage 1's target arrays are hidden states ``layers`` (indices or "final") of
    the training then the validation cache."""
    from workflow_scripts.backbones.cachefile import CacheFile

    caches = [CacheFile(world[k]) for k in ("train_cache", "val_cache")]
    want = [np.concatenate([c.read_state(i) for c in caches]) for i in layers]
    return len(targets) == len(want) and all(map(np.array_equal, targets, want))


def check_common(world, r, curves, sl):
    """What every cell records: sizes and clip counts, a consistent accuracy, the backbone
    reference, the mimicked model on raw audio agreeing with the cached path."""
    assert (r.model, r.kind, r.depth) == (MODEL, sl["kind"], sl["depth"])
    assert (r.n_layers, r.hidden_size) == (PRETRAIN["layers"], PRETRAIN["hidden"])
    assert (r.train_clips, r.val_clips, r.n, r.eval_clips) == (
        SIZES["training"], SIZES["validation"], SIZES["testing"], SIZES["testing"])  # fmt: skip
    assert r.speedup_lo <= r.speedup <= r.speedup_hi and r.timing_precision == "fp32"
    assert 0 <= r.accuracy <= 1 and r.ci_lo <= r.accuracy <= r.ci_hi
    assert r.accuracy_retained == pytest.approx(r.accuracy / r.backbone_accuracy)
    assert r.backbone_accuracy_source == "baseline cell"
    assert r.backbone_accuracy == pd.read_parquet(world["baseline"]).accuracy[0]
    # raw audio -> front end -> mimicker -> head gives the cached path's logits
    assert r.raw_audio_check_clips == sl["latency"]["batch_size"]
    assert r.raw_audio_check_agreement == 1.0 and r.raw_audio_check_max_abs_diff < 1e-3
    assert r.batch_size == sl["latency"]["batch_size"] and r.frames == 49
    assert list(curves.columns[:3]) == ["model", "kind", "depth"]
    assert (curves.model == MODEL).all() and (curves.kind == sl["kind"]).all()
    assert curves.best.sum() == curves.stage.nunique()  # one best epoch per stage


def test_no_mimic_cell_trains_only_the_head(world):
    sl, r, curves = run_tiny(world, "no_mimic", 0)
    check_common(world, r, curves, sl)
    assert list(r.target_layers) == [] and r.target_source == "none"
    assert r.last_target == "none"
    assert r.mimicker_params == 0 and r.stack_param_reduction_pct == 100.0
    assert r.stage1_best_epoch == 0 and np.isnan(r.stage1_best_val_loss)
    assert (r.freeze_mimicker, r.freeze_head) == (True, False)
    assert list(curves.stage) == [2, 2, 2] and list(curves.epoch) == [1, 2, 3]
    assert r.stage2_best_val_accuracy == curves[curves.best].val_accuracy.iloc[0]
    assert all(len(v) == 0 for v in curves.val_loss_per_target)


def test_no_mimic_backbone_reference_from_the_testing_cache(world):
    """A baseline cell that counts other clips: the reference is the fine-tuned head on the
    testing cache's last layer (float16), which predicts like the model on raw audio here."""
    cfg = tiny_config()
    sl = plan.cell_slice(cfg, MODEL, "no_mimic", "0")
    inputs = {**{k: world[k] for k in plan.cell_inputs(cfg, model=MODEL, kind="no_mimic",
                                                       depth="0")},
              "baseline": world["baseline_other"]}  # fmt: skip
    cell, *_ = mimic_run.run_cell(inputs, sl, world["root"], "cpu", QUIET)
    r = cell.iloc[0]
    assert r.backbone_accuracy_source == "testing cache"
    assert r.backbone_accuracy == pd.read_parquet(world["baseline"]).accuracy[0]


def capture_mimicker(monkeypatch):
    """Record the cell's mimicker, the teacher arrays stage 1 fits and the mimicker's weights
    after stage 1."""
    seen = {}
    build, stage1 = mimic_run.build_mimicker, mimic_run.train_stage1

    def build_spy(*args, **kwargs):
        seen["mimicker"] = build(*args, **kwargs)
        return seen["mimicker"]

    def stage1_spy(mimicker, inputs, targets, *args, **kwargs):
        seen["targets"] = [np.array(t[:]) for t in targets]  # every row of the cache views
        out = stage1(mimicker, inputs, targets, *args, **kwargs)
        seen["after_stage1"] = {k: v.clone() for k, v in mimicker.state_dict().items()}
        return out

    monkeypatch.setattr(mimic_run, "build_mimicker", build_spy)
    monkeypatch.setattr(mimic_run, "train_stage1", stage1_spy)
    return seen


def test_depth_2_targets_come_from_the_blocks_table(world, tmp_path, monkeypatch):
    seen = capture_mimicker(monkeypatch)
    sl, r, curves = run_tiny(world, "linear", 2)
    check_common(world, r, curves, sl)
    # blocks (0-1), (2-3) of a 3-layer model: the last layer of the first block, then layer 3
    assert list(r.target_layers) == [1, 3] and r.target_source == "blocks:cka_linear:last"
    assert r.last_target == "state L"  # post-LN: state L is what the head reads
    assert 0 < r.mimicker_params < r.stack_params
    assert list(curves.stage) == [1, 1, 1, 2, 2, 2]
    s1 = curves[curves.stage == 1]
    assert all(len(v) == 2 for v in s1.val_loss_per_target)  # one loss per target
    assert s1.val_loss.to_numpy() == pytest.approx([sum(v) for v in s1.val_loss_per_target])
    assert r.stage1_best_val_loss == s1.val_loss.min()
    # stage 1 fitted the caches' hidden states of those layers (training + validation rows)
    assert fits(world, seen["targets"], [1, 3])
    # another blocks table moves the intermediate target, and what stage 1 fits
    other = tmp_path / "blocks.csv"
    df = pd.read_csv(world["blocks"])
    df[["first_state", "last_state"]] = [[0, 2], [3, 3]]
    df.to_csv(other, index=False)
    _, r2, _ = run_tiny(world, "linear", 2, blocks=str(other))
    assert list(r2.target_layers) == [2, 3]
    assert fits(world, seen["targets"], [2, 3])


@pytest.mark.parametrize("freeze", [True, False])
def test_stage_2_leaves_a_frozen_mimicker_untouched(world, monkeypatch, freeze):
    seen = capture_mimicker(monkeypatch)
    stage2 = {"epochs": 3, "batch_size": 8, "freeze_mimicker": freeze}
    sl, r, curves = run_tiny(world, "transformer", 1, stage2=stage2)
    check_common(world, r, curves, sl)
    assert list(r.target_layers) == [3] and r.target_source == "last"
    assert (r.freeze_mimicker, r.freeze_head) == (freeze, False)
    assert list(curves.stage) == [1, 1, 1, 2, 2, 2] and r.stage2_best_epoch >= 1
    final = seen["mimicker"].state_dict()
    same = all(torch.equal(final[k], v) for k, v in seen["after_stage1"].items())
    assert same is freeze  # frozen: bit-identical to stage 1's result; else trained further


def test_stage_2_with_0_epochs_is_skipped(world):
    sl, r, curves = run_tiny(world, "linear", 1, stage2={"epochs": 0})
    check_common(world, r, curves, sl)
    assert list(curves.stage) == [1, 1, 1]
    assert r.stage2_best_epoch == 0 and np.isnan(r.stage2_best_val_accuracy)


def test_rule_adapter_writes_cell_curves_and_provenance(world, tmp_path):
    from workflow_scripts.core.provenance import read_provenance

    cfg = tiny_config()
    sl = plan.cell_slice(cfg, MODEL, "linear", "2")
    names = plan.cell_inputs(cfg, model=MODEL, kind="linear", depth="2")
    inputs = {k: world[k] for k in names}
    out = {"cell": str(tmp_path / "c.parquet"), "curves": str(tmp_path / "c.curves.parquet"),
           "predictions": str(tmp_path / "c.predictions.parquet"),
           "export": str(tmp_path / "export")}  # fmt: skip
    params = {"slice": cell_json(sl), "root": world["root"]}
    from snakemake.iocontainers import Namedlist

    smk = SimpleNamespace(  # what the script reads of Snakemake's object
        input=Namedlist(fromdict=inputs),
        output=Namedlist(fromdict=out),
        params=Namedlist(fromdict=params),
        log=[str(tmp_path / "c.log")],
        wildcards={"model": MODEL, "kind": "linear", "depth": "2"},
        threads=1,
        rule="mimic_cell",
    )
    stdout, stderr = sys.stdout, sys.stderr
    try:
        runpy.run_path(str(ROOT / "workflow_scripts/scripts/mimic_cell.py"),
                       init_globals={"snakemake": smk})  # fmt: skip
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    cell, curves = pd.read_parquet(out["cell"]), pd.read_parquet(out["curves"])
    assert list(cell.target_layers[0]) == [1, 3] and len(curves) == 6
    prov = read_provenance(out["cell"])
    assert json.loads(prov["config_slice"]) == sl and prov["seed"] == str(sl["seed"])
    assert set(json.loads(prov["inputs_sha256"])) == set(inputs)
    assert "target layers [1, 3]" in (tmp_path / "c.log").read_text()
    pred = pd.read_parquet(out["predictions"])  # with the cell's provenance
    assert (pred.predicted == pred.label).mean() == cell.accuracy[0]
    assert read_provenance(out["predictions"])["config_slice"] == prov["config_slice"]
    export = json.loads((tmp_path / "export" / "export.json").read_text())["cell"]
    assert export["accuracy"] == cell.accuracy[0]  # the mimicked model: tests/test_export.py
