"""The structured-pruning grid's plan and tables (workflow_scripts.structured.plan / .report):
cells, targets, per-cell config slices and inputs, config checks, the schema, the summary and
the comparison chart's data."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_scripts.core import paths
from workflow_scripts.core.config import ConfigError, cell_json, validate_config
from workflow_scripts.structured import plan
from workflow_scripts.structured import report as sr

ROOT = Path(__file__).resolve().parent.parent


def config(outputs=("structured",), **section) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    base = [o for o in cfg["outputs"] if o not in ("pruning", "mimic", "structured")]
    cfg["outputs"] = [*base, *outputs]
    if section:
        cfg["structured"] = section
    return validate_config(cfg)


@pytest.mark.parametrize("module", ["plan", "report"])
def test_module_imports_no_torch(module):
    """Snakemake imports the plan on every run; the tables rule runs in the torch-free env."""
    code = f"import sys, workflow_scripts.structured.{module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_targets_are_models_times_sparsities_plus_tables():
    cfg = config(targets=[0.6, 0.3, 0.75])
    got = plan.targets(cfg, "R")
    cells = {f"R/cells/structured/{m}/{s}.parquet" for m in cfg["models"]
             for s in ("0.3", "0.6", "0.75")}  # fmt: skip
    assert len(got) == len(set(got)) == len(cells) + 5
    assert cells <= set(got)
    pat = plan.wildcard_constraints(cfg)["sparsity"]
    assert (
        re.fullmatch(pat, "0.75") and not re.fullmatch(pat, "0.5") and not re.fullmatch(pat, "0x3")
    )


def test_cells_paths_and_inputs_come_from_the_path_templates():
    cfg = config(targets=[0.6, 0.3])
    models = list(cfg["models"])
    assert plan.cells(cfg) == [{"model": m, "sparsity": s} for m in models for s in ("0.3", "0.6")]
    assert plan.cell_paths(cfg, "R") == [
        paths.path("structured_cell", "R", **c) for c in plan.cells(cfg)
    ]
    assert plan.cell_paths(cfg, "R")[0] == f"R/cells/structured/{models[0]}/0.3.parquet"
    assert plan.cell_inputs(cfg, "R", model="m", sparsity="0.3") == {
        "model": "R/finetuned/m",
        "train_cache": "R/cache/m/training.safetensors",
        "manifest": "R/data/manifest.parquet",
    }
    assert paths.path("structured_model", "R", model="m", sparsity="0.3") == "R/structured/m/0.3"
    assert plan.wildcard_constraints(config(targets=[1e-05]))["sparsity"] == re.escape("1e-05")


def test_fractional_layers_are_rounded_once_for_caches_and_stages():
    """The caches' state tokens (L/3, L/2, 2L/3), the distilled layers and the mimickers'
    evenly spaced targets share one rounding, so a cache stores the very state a stage asks
    for: at every depth, also where L/2 or L/3 rounds to 0 (L = 1)."""
    from workflow_scripts.backbones.plan import layer_fraction, resolve_states
    from workflow_scripts.mimic.targets import choose_targets

    for L in range(1, 49):
        assert plan.default_distill_layers(L) == resolve_states(["L/3", "2L/3", "L"], L)
        assert choose_targets(2, L) == [*resolve_states(["L/2"], L), L]
    assert [layer_fraction(1, 3, L) for L in (1, 2, 12, 24)] == [1, 1, 4, 8]
    assert [layer_fraction(1, 2, L) for L in (1, 3, 5, 12)] == [1, 2, 2, 6]  # half to even


def test_distill_layers_default_and_range():
    cell = {"distill": {"layers": None}}
    assert plan.distill_layers(cell, 12) == [4, 8, 12] == plan.default_distill_layers(12)
    assert plan.distill_layers(cell, 1) == [1]
    assert plan.distill_layers({"distill": {"layers": [3, 1]}}, 3) == [3, 1]
    with pytest.raises(ValueError, match=r"structured.distill.layers \[0, 4\] out of range 1..3"):
        plan.distill_layers({"distill": {"layers": [0, 4, 2]}}, 3)


def test_config_problems_name_the_key():
    cfg = {
        "models": {"small": {"pretrain": {"layers": 3, "hidden": 32}}, "hub": {"hf": "x/y"}},
        "structured": {"targets": [0.3, 0.30000000001, 0.6], "distill": {"layers": [2, 4]}},
    }
    problems = plan.config_problems(cfg)
    assert problems == [
        "config.structured.distill.layers: [4] out of range 1..3 for model small",
        "config.structured.targets: [0.3, 0.30000000001] share the cell name '0.3'",
    ]  # the hub model's depth is unknown without loading it: not checked
    assert plan.config_problems(config()) == []


def test_cell_slice_holds_its_target_only():
    base = config(targets=[0.3, 0.6])
    more = config(targets=[0.3, 0.6, 0.9])

    def sl(cfg, s):
        return plan.cell_slice(cfg, model="m", sparsity=s)

    assert cell_json(sl(base, "0.3")) == cell_json(sl(more, "0.3"))  # adding a target: no rerun
    assert sl(base, "0.6")["target"] == 0.6
    assert "targets" not in sl(base, "0.3")
    # the fine-tune's settings enter only when it is on
    quiet = config(targets=[0.3], finetune={"steps": 0, "lr": 0.5})
    assert sl(quiet, "0.3")["finetune"] == {"steps": 0}
    on = config(targets=[0.3], finetune={"steps": 5, "lr": 0.5})
    assert sl(on, "0.3")["finetune"]["lr"] == 0.5
    ste = config(targets=[0.3], straight_through=True)
    assert cell_json(sl(ste, "0.3")) != cell_json(sl(base, "0.3"))
    # the test clips are the evaluation set every stage uses, not a key of the section
    assert sl(base, "0.3")["test_clips"] == base["evaluation"]["test_clips"] == 512
    with pytest.raises(ConfigError, match="config.structured: unknown key"):
        config(targets=[0.3], test_clips=256)


def test_comparison_reads_only_enabled_stages():
    alone = config()
    assert plan.compared_tables(alone, "R") == {}
    assert plan.tables_slice(alone) == {"comparison": [], "threshold": 0.95}
    assert plan.tables_inputs(alone, "R") == {"cells": plan.cell_paths(alone, "R")}
    both = config(outputs=("structured", "pruning", "mimic"))
    assert plan.compared_tables(both, "R") == {"pruning": "R/tables/pruning.parquet",
                                               "mimic": "R/tables/mimic.parquet"}  # fmt: skip
    assert plan.tables_inputs(both, "R") == {"pruning": "R/tables/pruning.parquet",
                                             "mimic": "R/tables/mimic.parquet",
                                             "cells": plan.cell_paths(both, "R")}  # fmt: skip
    assert plan.tables_slice(both) == {"comparison": ["mimic", "pruning"], "threshold": 0.95}


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"targets": [1.0]}, "config.structured.targets[0]: 1.0 is greater than or equal"),
        ({"gates": {"neurons": True}}, "config.structured.gates: unknown key(s) ['neurons']"),
        ({"distill": {"loss": "kl"}}, "config.structured.distill.loss: 'kl' is not one of"),
        ({"steps": 0}, "config.structured.steps: 0 is less than the minimum"),
    ],
)
def test_schema_names_the_bad_key(section, expected):
    with pytest.raises(ConfigError) as err:
        config(**section)
    assert expected in str(err.value)


def cells_frame():
    rows = []
    for model in ("b", "a"):
        for t, acc in ((0.6, 0.5), (0.3, 0.7)):
            rows.append({"model": model, "target_sparsity": t, "achieved_sparsity": t - 0.01,
                         "expected_sparsity": t, "accuracy": acc, "base_accuracy": 0.8,
                         "retained": acc / 0.8, "total_params": int(1e6 * (1 - t)),
                         "base_total_params": 1_000_000, "kept_heads": [4, 3]})  # fmt: skip
    return pd.DataFrame(rows)


def test_summary_orders_models_by_appearance_and_targets():
    s = sr.summary_table(cells_frame())
    assert list(s.model) == ["b", "b", "a", "a"] and list(s.target_sparsity) == [0.3, 0.6] * 2
    md = sr.summary_markdown(s)
    assert md.count("\n") == 6 and "| 4 3 |" in md


def test_comparison_long_joins_the_three_methods():
    pruning = pd.DataFrame({"model": ["a"] * 3, "strategy": ["backward"] * 2 + ["random"],
                            "seed": [None, None, 1], "n_removed": [0, 1, 1],
                            "total_params": [1e6, 9e5, 9e5], "accuracy": [0.8, 0.7, 0.1],
                            "relative_accuracy": [1.0, 0.875, 0.125]})  # fmt: skip
    mimic = pd.DataFrame({"model": ["a"], "kind": ["linear"], "depth": [1], "accuracy": [0.6],
                          "mimicked_model_params": [2e5], "backbone_accuracy": [0.8]})  # fmt: skip
    long = sr.comparison_long(cells_frame(), copy.deepcopy(pruning), mimic)
    fams = long.groupby("family").size().to_dict()
    assert fams == {"unpruned": 2, "structured": 4, "layer pruning": 2, "mimicker": 1}
    assert set(long[long.family == "layer pruning"].accuracy) == {0.8, 0.7}  # per-seed dropped
    assert long[long.family == "mimicker"].retained.iloc[0] == pytest.approx(0.75)
    from workflow_scripts.report.charts import comparison_chart

    spec = comparison_chart(long).to_dict()
    assert spec["facet"]["column"]["field"] == "model"
    only = sr.comparison_long(cells_frame())
    assert set(only.family) == {"unpruned", "structured"}


def test_stage_tables_stack_cells_and_read_the_compared_stages(tmp_path):
    frame = cells_frame()
    cell_files = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cell_files.append(str(tmp_path / f"c{i}.parquet"))
        pd.DataFrame([row]).to_parquet(cell_files[-1])
    mimic = pd.DataFrame({"model": ["a"], "kind": ["linear"], "depth": [1], "accuracy": [0.6],
                          "mimicked_model_params": [2e5], "backbone_accuracy": [0.8]})  # fmt: skip
    mimic.to_parquet(tmp_path / "mimic.parquet")
    t = sr.stage_tables(cell_files, {"mimic": str(tmp_path / "mimic.parquet")})
    assert len(t["table"]) == 4 and list(t["summary"].model) == ["b", "b", "a", "a"]
    assert set(t["comparison"].family) == {"unpruned", "structured", "mimicker"}
    empty = sr.stage_tables([], {})
    assert empty["summary"].empty and list(empty["summary"].columns) == sr.SUMMARY_COLUMNS
