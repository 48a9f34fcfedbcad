"""The structured-pruning grid's helpers (workflow_scripts.structured.cells): targets, per-cell
config slices, the schema, the rule's outputs, the summary and the comparison chart's data."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_scripts.core.config import ConfigError, validate_config
from workflow_scripts.structured import cells as sc

ROOT = Path(__file__).resolve().parent.parent


def config(outputs=("structured",), **section) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    base = [o for o in cfg["outputs"] if o not in ("pruning", "mimic", "structured")]
    cfg["outputs"] = [*base, *outputs]
    if section:
        cfg["structured"] = section
    return validate_config(cfg)


def test_module_imports_no_torch():
    code = "import sys, workflow_scripts.structured.cells; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_targets_are_models_times_sparsities_plus_tables():
    cfg = config(targets=[0.6, 0.3, 0.75])
    got = sc.targets(cfg, "R")
    cells = {f"R/cells/structured/{m}/{s}.parquet" for m in cfg["models"]
             for s in ("0.3", "0.6", "0.75")}  # fmt: skip
    assert len(got) == len(set(got)) == len(cells) + 5
    assert cells <= set(got)
    pat = sc.sparsity_pattern(cfg)
    assert (
        re.fullmatch(pat, "0.75") and not re.fullmatch(pat, "0.5") and not re.fullmatch(pat, "0x3")
    )


def test_rule_outputs_match_targets():
    text = (ROOT / "rules/structured.smk").read_text()
    in_rule = set(re.findall(r'f"\{RESULTS\}/((?:tables|charts)/[^"]*)"', text))
    assert in_rule == {p.removeprefix("R/") for p in sc.table_outputs("R").values()}
    assert "cells/structured/{{model}}/{{sparsity}}.parquet" in text


def test_cell_slice_holds_its_target_only():
    base = config(targets=[0.3, 0.6])
    more = config(targets=[0.3, 0.6, 0.9])
    assert sc.cell_json(base, "0.3") == sc.cell_json(more, "0.3")  # adding a target: no rerun
    assert sc.cell_params(base, "0.6")["target"] == 0.6
    assert "targets" not in sc.cell_params(base, "0.3")
    # the fine-tune's settings enter only when it is on
    quiet = config(targets=[0.3], finetune={"steps": 0, "lr": 0.5})
    assert sc.cell_params(quiet, "0.3")["finetune"] == {"steps": 0}
    on = config(targets=[0.3], finetune={"steps": 5, "lr": 0.5})
    assert sc.cell_params(on, "0.3")["finetune"]["lr"] == 0.5
    ste = config(targets=[0.3], straight_through=True)
    assert sc.cell_json(ste, "0.3") != sc.cell_json(base, "0.3")


def test_comparison_reads_only_enabled_stages():
    assert sc.comparison_inputs(config(), "R") == {}
    both = config(outputs=("structured", "pruning", "mimic"))
    assert sc.comparison_inputs(both, "R") == {"pruning": "R/tables/pruning.parquet",
                                                "mimic": "R/tables/mimic.parquet"}  # fmt: skip


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
    s = sc.summary_table(cells_frame())
    assert list(s.model) == ["b", "b", "a", "a"] and list(s.target_sparsity) == [0.3, 0.6] * 2
    md = sc.markdown_table(s)
    assert md.count("\n") == 6 and "| 4 3 |" in md


def test_comparison_long_joins_the_three_methods():
    pruning = pd.DataFrame({"model": ["a"] * 3, "strategy": ["backward"] * 2 + ["random"],
                            "seed": [None, None, 1], "n_removed": [0, 1, 1],
                            "total_params": [1e6, 9e5, 9e5], "accuracy": [0.8, 0.7, 0.1],
                            "relative_accuracy": [1.0, 0.875, 0.125]})  # fmt: skip
    mimic = pd.DataFrame({"model": ["a"], "kind": ["linear"], "depth": [1], "accuracy": [0.6],
                          "mimicked_model_params": [2e5], "backbone_accuracy": [0.8]})  # fmt: skip
    long = sc.comparison_long(cells_frame(), copy.deepcopy(pruning), mimic)
    fams = long.groupby("family").size().to_dict()
    assert fams == {"unpruned": 2, "structured": 4, "layer pruning": 2, "mimicker": 1}
    assert set(long[long.family == "layer pruning"].accuracy) == {0.8, 0.7}  # per-seed dropped
    assert long[long.family == "mimicker"].retained.iloc[0] == pytest.approx(0.75)
    from workflow_scripts.report.charts import comparison_chart

    spec = comparison_chart(long).to_dict()
    assert spec["facet"]["column"]["field"] == "model"
    only = sc.comparison_long(cells_frame())
    assert set(only.family) == {"unpruned", "structured"}
