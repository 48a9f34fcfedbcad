"""The mimic grid wiring (workflow_scripts.mimic.plan, .targets, .report): which cells exist,
what each cell's slice and inputs hold, the aggregation's inputs and the wildcard constraints,
the target layers a depth-2 mimicker gets from a blocks table, the summary table, the schema and
cross-checks, the charts. (The rules themselves: tests/test_mimic_workflow.py.)"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from workflow_scripts.core.config import ConfigError, cell_json, validate_config
from workflow_scripts.mimic import plan
from workflow_scripts.mimic.report import (
    SUMMARY_COLUMNS,
    summary_markdown,
    summary_table,
    tradeoff_long,
)
from workflow_scripts.mimic.targets import target_layers

MODELS = {"a": {"pretrain": {"arch": "hubert", "layers": 10, "hidden": 128, "heads": 4}},
          "b": {"pretrain": {"arch": "wavlm", "layers": 6, "hidden": 64, "heads": 4}}}  # fmt: skip


def cfg_with(mimic: dict | None = None, **top) -> dict:
    cfg = {"models": copy.deepcopy(MODELS), "outputs": ["mimic"], **top}
    if mimic is not None:
        cfg["mimic"] = mimic
    return validate_config(cfg)


# ------------------------------------------------------------------------------ the grid
def test_default_grid_and_targets_list_exactly_the_cells_and_tables():
    cfg = cfg_with()
    assert plan.grid(cfg) == [
        (m, k, d)
        for m in ("a", "b")
        for k, d in (("linear", 1), ("linear", 2), ("transformer", 1), ("no_mimic", 0))
    ]
    got = plan.targets(cfg, "R")
    cells = [f"R/cells/mimic/{m}/{c}.parquet" for m in ("a", "b")
             for c in ("linear-1", "linear-2", "transformer-1", "no_mimic-0")]  # fmt: skip
    tables = ["R/tables/mimic.parquet", "R/tables/mimic_summary.csv", "R/tables/mimic_summary.md",
              "R/charts/mimic_tradeoff.html", "R/charts/mimic_tradeoff.png",
              "R/charts/mimic_curves.html", "R/charts/mimic_curves.png"]  # fmt: skip
    assert sorted(got) == sorted(cells + tables) and len(got) == len(set(got))


def test_configured_types_and_depths_decide_the_cells():
    cfg = cfg_with({"types": {"transformer": {"depths": [2, 1]}}, "no_mimic": False})
    assert plan.grid(cfg) == [("a", "transformer", 1), ("a", "transformer", 2),
                            ("b", "transformer", 1), ("b", "transformer", 2)]  # fmt: skip
    assert not any("linear" in p or "no_mimic" in p for p in plan.targets(cfg, "R"))


def test_cells_paths_and_the_tables_inputs_follow_the_grid():
    cfg = cfg_with({"types": {"linear": {"depths": [2]}}})
    assert plan.cells(cfg) == [{"model": m, "kind": k, "depth": d} for m in ("a", "b")
                               for k, d in (("linear", "2"), ("no_mimic", "0"))]  # fmt: skip
    assert plan.cell_paths(cfg, "R")[:2] == ["R/cells/mimic/a/linear-2.parquet",
                                             "R/cells/mimic/a/no_mimic-0.parquet"]  # fmt: skip
    ins = plan.tables_inputs(cfg, "R")
    assert ins["cells"] == plan.cell_paths(cfg, "R")
    assert ins["curves"] == [p.replace(".parquet", ".curves.parquet") for p in ins["cells"]]
    # the slice is the list of cells the tables stack and the accuracy threshold of
    # meets_threshold, the overview's (rule params: its canonical JSON)
    assert plan.tables_slice(cfg) == {"cells": plan.grid(cfg), "threshold": 0.95}
    assert plan.tables_slice({**cfg, "pruning": {"threshold": 0.9}})["threshold"] == 0.9
    assert json.loads(cell_json(plan.tables_slice(cfg)))["cells"][0] == ["a", "linear", 2]


def test_wildcard_constraints_are_the_configured_kinds():
    cfg = cfg_with({"types": {"transformer": {"depths": [1]}}, "no_mimic": False})
    wc = plan.wildcard_constraints(cfg)
    assert wc == {"kind": "transformer", "depth": "[0-9]+"}
    kinds = re.compile(plan.wildcard_constraints(cfg_with())["kind"])
    for name in ("linear", "transformer", "no_mimic"):
        assert kinds.fullmatch(name)
    assert not kinds.fullmatch("identity") and not kinds.fullmatch("linear-1")


def test_plan_imports_no_torch():
    code = "import sys, workflow_scripts.mimic.plan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "False"


# ------------------------------------------------------------------------ params slices
def test_cell_slice_holds_only_that_mimickers_settings():
    cfg = cfg_with({"types": {"linear": {"depths": [1, 2], "width": 32},
                              "transformer": {"depths": [1], "heads": 4, "ffn": 96}},
                    "targets": {"metric": "cosine", "layers": {"b": 3}}})  # fmt: skip
    lin1 = plan.cell_slice(cfg, "a", "linear", "1")
    assert lin1["layer"] == {"width": 32, "positions": "none"}  # no heads/ffn/dropout/depths
    assert "targets" not in lin1 and "stage1" in lin1 and lin1["depth"] == 1
    tr1 = plan.cell_slice(cfg, "a", "transformer", 1)
    assert tr1["layer"] == {"heads": 4, "ffn": 96, "dropout": 0.1, "positions": "none"}
    assert plan.cell_slice(cfg, "a", "linear", 2)["targets"] == {
        "metric": "cosine", "pick": "last", "fallback": "even"}  # fmt: skip
    assert plan.cell_slice(cfg, "b", "linear", 2)["targets"] == {"layer": 3}  # only b's layer
    base = plan.cell_slice(cfg, "a", "no_mimic", 0)
    assert "stage1" not in base and "layer" not in base and "targets" not in base
    assert set(base["stage2"]) == {"epochs", "lr", "batch_size"}  # freeze flags do not apply
    assert json.loads(cell_json(plan.cell_slice(cfg, "a", "linear", 1))) == lin1

    # editing the transformer, another model's explicit layer, the targets or the freeze flags
    # leaves exactly the cells that do not use them untouched
    before = {c: cell_json(plan.cell_slice(cfg, *c)) for c in plan.grid(cfg)}
    cfg["mimic"]["types"]["transformer"]["ffn"] = 128
    cfg["mimic"]["targets"]["layers"]["b"] = 4
    cfg["mimic"]["targets"]["pick"] = "first"
    cfg["mimic"]["stage2"]["freeze_head"] = True
    changed = {c for c in before if cell_json(plan.cell_slice(cfg, *c)) != before[c]}
    assert changed == {("a", "transformer", 1), ("b", "transformer", 1), ("a", "linear", 2),
                       ("b", "linear", 2), ("a", "linear", 1), ("b", "linear", 1)}  # fmt: skip
    cfg["mimic"]["stage2"]["freeze_head"] = False
    changed = {c for c in before if cell_json(plan.cell_slice(cfg, *c)) != before[c]}
    assert changed == {("a", "transformer", 1), ("b", "transformer", 1), ("a", "linear", 2),
                       ("b", "linear", 2)}  # fmt: skip


def test_conv_kernel_enters_the_slice_only_with_conv_positions():
    types = {"transformer": {"depths": [1], "heads": 4, "positions": "sinusoidal",
                             "conv_kernel": 9}}  # fmt: skip
    cfg = cfg_with({"types": types})
    assert plan.cell_slice(cfg, "a", "transformer", 1)["layer"] == {
        "heads": 4, "ffn": 64, "dropout": 0.1, "positions": "sinusoidal"}  # fmt: skip
    cfg["mimic"]["types"]["transformer"]["positions"] = "conv"
    assert plan.cell_slice(cfg, "a", "transformer", 1)["layer"]["conv_kernel"] == 9


def test_unconfigured_cells_are_refused():
    cfg = cfg_with({"types": {"linear": {"depths": [1]}}})
    with pytest.raises(ValueError, match="'transformer' is not configured"):
        plan.cell_slice(cfg, "a", "transformer", 1)
    with pytest.raises(ValueError, match="depth 1 or 2"):
        plan.cell_slice(cfg, "a", "linear", 3)
    with pytest.raises(ValueError, match="depth 0"):
        plan.cell_slice(cfg, "a", "no_mimic", 1)


def test_cell_inputs_need_blocks_only_for_depth_2_from_blocks():
    cfg = cfg_with({"targets": {"layers": {"b": 3}}})
    linear = lambda model, depth: plan.cell_inputs(cfg, "R", model=model, kind="linear",
                                                   depth=depth)  # fmt: skip
    assert linear("a", "2")["blocks"] == "R/blocks/a/cka_linear.csv"
    assert "blocks" not in linear("b", "2")  # explicit layer
    ins = linear("a", "1")
    assert ins == {
        "model": "R/finetuned/a",
        "train_cache": "R/cache/a/training.safetensors",
        "val_cache": "R/cache/a/validation.safetensors",
        "test_cache": "R/cache/a/testing.safetensors",
        "baseline": "R/cells/baseline/a.parquet",
        "baseline_predictions": "R/cells/baseline/a.predictions.parquet",
    }
    cfg = cfg_with({"targets": {"metric": None}})
    assert "blocks" not in plan.cell_inputs(cfg, "R", model="a", kind="linear", depth="2")


# ----------------------------------------------------------------------- target layers
def blocks_df():
    rows = [("a", "cka_linear", 0, 3), ("a", "cka_linear", 4, 7), ("a", "cka_linear", 8, 10),
            ("a", "cosine", 0, 10), ("b", "cka_linear", 0, 2),
            ("b", "cka_linear", 3, 6)]  # fmt: skip
    df = pd.DataFrame(rows, columns=["model", "metric", "first_state", "last_state"])
    df["n_states"] = df.model.map({"a": 11, "b": 7})
    return df.sample(frac=1, random_state=0)  # the order of the rows must not matter


def test_target_layers_from_a_blocks_table():
    b = blocks_df()
    t = {"metric": "cka_linear", "pick": "last", "fallback": "even"}
    assert target_layers(2, 10, "a", t, b) == ([3, 10], "blocks:cka_linear:last")
    assert target_layers(2, 10, "a", {**t, "pick": "first"}, b)[0] == [1, 10]  # never 0
    assert target_layers(2, 10, "a", {**t, "pick": "middle"}, b)[0] == [2, 10]
    assert target_layers(2, 6, "b", t, b) == ([2, 6], "blocks:cka_linear:last")
    assert target_layers(1, 10, "a", t, b) == ([10], "last")
    assert target_layers(2, 10, "a", {"layer": 6}, None) == ([6, 10], "explicit")
    assert target_layers(2, 10, "a", {"metric": None}, None) == ([5, 10], "even")
    # one block spanning everything: nothing before the last layer
    layers, source = target_layers(2, 10, "a", {**t, "metric": "cosine"}, b)
    assert layers == [5, 10] and source.startswith("even (fallback: cosine blocks [[0, 10]]")
    with pytest.raises(ValueError, match="needs 1 intermediate target"):
        target_layers(2, 10, "a", {**t, "metric": "cosine", "fallback": "error"}, b)
    with pytest.raises(ValueError, match="no blocks of model 'a' for metric 'mutual_knn'"):
        target_layers(2, 10, "a", {**t, "metric": "mutual_knn"}, b)
    with pytest.raises(ValueError, match="stale"):
        target_layers(2, 12, "a", t, b)
    with pytest.raises(ValueError, match="out of range"):
        target_layers(2, 10, "a", {"layer": 11}, None)


# ------------------------------------------------------- stage 2 with a frozen mimicker
def frozen_outputs(mimicker, inputs, batch_size):
    """The eval-mode mimicker's last output (N, T, D) float32 for every row, computed once (what
    the cell precomputed before it streamed)."""
    import numpy as np
    import torch

    mimicker.eval()
    out = np.empty(inputs.shape, dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(inputs), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(inputs[s : s + batch_size]))
            out[s : s + len(xb)] = mimicker(xb.float())[-1].numpy()
    return out


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_frozen_outputs_make_stage2_identical_to_running_the_frozen_mimicker(kind):
    """The cell runs a frozen mimicker in every stage-2 batch (eval mode, no gradients): same
    history and same head as training the head on the mimicker's precomputed outputs through
    an identity mimicker (what the cell did before it streamed the caches)."""
    import numpy as np
    import torch
    from torch import nn

    from workflow_scripts.mimic.model import ClassifierHead, Mimicker, no_mimic
    from workflow_scripts.mimic.train import Stage2Config, train_stage2

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 16)).astype(np.float16)
    y = rng.integers(0, 3, 40)
    torch.manual_seed(0)
    m = Mimicker(kind, 1, 16, width=8, heads=2, ffn=8)
    head = ClassifierHead(nn.Linear(16, 8), nn.Linear(8, 3))
    h1, h2 = copy.deepcopy(head), copy.deepcopy(head)
    quiet = lambda *_: None  # noqa: E731
    tr, va = np.arange(30), np.arange(30, 40)
    ref = train_stage2(m, h1, x, y, tr, va, Stage2Config(3, batch_size=8), log=quiet)
    feats = frozen_outputs(m, x, batch_size=7)
    assert feats.dtype == np.float32 and feats.shape == x.shape
    got = train_stage2(no_mimic(16), h2, feats, y, tr, va, Stage2Config(3, batch_size=8),
                       log=quiet)  # fmt: skip
    for a, b in zip(ref["history"], got["history"], strict=True):
        assert a["epoch"] == b["epoch"] and a["val_accuracy"] == b["val_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    for p, q in zip(h1.parameters(), h2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not m.training  # left in eval mode, weights untouched by either path


# -------------------------------------------------------------------------- summary
def cell_row(model, kind, depth, acc, base, stack_p, mim_p, model_p, mm_p, stack_ms, mim_ms,
             model_ms, mm_ms):  # fmt: skip
    return {"model": model, "kind": kind, "depth": depth, "target_layers": [4, 10][-max(depth, 1):],
            "accuracy": acc, "ci_lo": acc - 0.01, "ci_hi": acc + 0.01, "backbone_accuracy": base,
            "stack_params": stack_p, "mimicker_params": mim_p, "model_params": model_p,
            "mimicked_model_params": mm_p, "stack_ms": stack_ms, "mimicker_ms": mim_ms,
            "model_ms": model_ms, "mimicked_model_ms": mm_ms, "batch_size": 8,
            "eval_clips": 512, "speedup": 2.0, "speedup_lo": 1.9, "speedup_hi": 2.2,
            "timing_precision": "fp32", "device": "cpu"}  # fmt: skip


def test_summary_table_known_answer():
    cells = pd.DataFrame([
        cell_row("m2", "linear", 1, 0.80, 0.80, 1000, 10, 1500, 510, 40.0, 2.0, 50.0, 12.0),
        cell_row("m1", "no_mimic", 0, 0.45, 0.90, 1000, 0, 1500, 500, 40.0, 0.0, 50.0, 10.0),
        cell_row("m1", "transformer", 1, 0.90, 0.90, 1000, 200, 1500, 700, 40.0, 10.0, 50.0, 20.0),
        cell_row("m1", "linear", 2, 0.855, 0.90, 1000, 50, 1500, 550, 40.0, 4.0, 50.0, 25.0),
    ])  # fmt: skip
    s = summary_table(cells)
    assert list(s.columns) == SUMMARY_COLUMNS
    order = [("m2", "linear-1"), ("m1", "linear-2"), ("m1", "transformer-1"), ("m1", "no_mimic-0")]
    assert list(zip(s.model, s.mimicker, strict=True)) == order
    r = s.set_index(["model", "mimicker"])
    assert r.loc[("m1", "linear-2"), "accuracy_retained_pct"] == pytest.approx(95.0)
    assert r.loc[("m1", "no_mimic-0"), "accuracy_retained_pct"] == pytest.approx(50.0)
    assert list(s.meets_threshold) == [True, True, True, False]
    # the configured threshold, not a fixed 95%: m1's linear-2 keeps 95.0%, no_mimic 50%
    strict = summary_table(cells, threshold=0.96).set_index(["model", "mimicker"])
    assert strict.meets_threshold.to_dict() == {
        ("m2", "linear-1"): True, ("m1", "linear-2"): False, ("m1", "transformer-1"): True,
        ("m1", "no_mimic-0"): False}  # fmt: skip
    assert summary_table(cells, threshold=0.5).meets_threshold.all()
    assert r.loc[("m1", "linear-2"), "stack_param_reduction_pct"] == pytest.approx(95.0)
    assert r.loc[("m1", "transformer-1"), "model_param_reduction_pct"] == pytest.approx(
        100 * 8 / 15
    )
    assert r.loc[("m1", "linear-2"), "stack_latency_reduction_pct"] == pytest.approx(90.0)
    assert r.loc[("m1", "linear-2"), "model_latency_reduction_pct"] == pytest.approx(50.0)
    assert r.loc[("m2", "linear-1"), "target_layers"] == "10"
    assert r.loc[("m1", "linear-2"), "target_layers"] == "4,10"
    assert r.loc[("m1", "linear-2"), "latency_batch_size"] == 8
    # the cells' own interleaved speed-ups and clip counts pass through; absent ones are NaN
    assert list(r.loc[("m1", "linear-2"), ["speedup", "speedup_lo", "speedup_hi"]]) == [
        2.0, 1.9, 2.2]  # fmt: skip
    assert (s.eval_clips == 512).all() and (s.timing_precision == "fp32").all()
    assert s.stack_speedup.isna().all()
    md = summary_markdown(s)
    lines = md.splitlines()
    assert len(lines) == 2 + len(s) and lines[1].startswith("| --- |")
    assert "| m1 | linear-2 | linear | 2 | 4,10 | 85.50 |" in md  # accuracy in percent
    assert summary_table(cells.iloc[:0]).columns.tolist() == SUMMARY_COLUMNS


def test_tradeoff_and_curve_charts_are_offline_html_and_png(tmp_path):
    from workflow_scripts.report.charts import mimic_curves_chart, mimic_tradeoff_chart, save_chart

    cells = pd.DataFrame([
        cell_row("m1", "linear", 1, 0.85, 0.90, 1000, 10, 1500, 510, 40.0, 2.0, 50.0, 12.0),
        cell_row("m1", "no_mimic", 0, 0.45, 0.90, 1000, 0, 1500, 500, 40.0, 0.0, 50.0, 10.0),
    ])  # fmt: skip
    long = tradeoff_long(summary_table(cells))
    assert len(long) == 2 * 3 and set(long.cost) == {
        "parameters: stack vs mimicker", "latency: stack vs mimicker",
        "latency: full vs mimicked model"}  # fmt: skip
    curves = pd.DataFrame({"model": "m1", "kind": "linear", "depth": 1, "stage": [1, 1, 2],
                           "epoch": [1, 2, 1], "train_loss": [1.0, 0.5, 2.0],
                           "val_loss": [1.1, 0.6, 2.1]})  # fmt: skip
    rule = mimic_tradeoff_chart(long, threshold=0.9).to_dict()["spec"]["layer"][1]
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y"]["datum"] == 90
    for name, chart in (("t", mimic_tradeoff_chart(long)), ("c", mimic_curves_chart(curves))):
        save_chart(chart, tmp_path / f"{name}.html", tmp_path / f"{name}.png")
        html = (tmp_path / f"{name}.html").read_text()
        assert "<script" in html and "https://cdn" not in html
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- schema and cross-checks
@pytest.mark.parametrize(
    "mimic, expected",
    [
        ({"types": {"conv": {}}}, "config.mimic.types: unknown key(s) ['conv']"),
        ({"types": {"linear": {"depths": [1, 3]}}},
         "config.mimic.types.linear.depths[1]: 3 is not one of the allowed values [1, 2]"),
        ({"types": {"transformer": {"width": 64}}},
         "config.mimic.types.transformer: unknown key(s) ['width']"),
        ({"targets": {"metric": "block_influence"}}, "config.mimic.targets.metric: 'block_infl"),
        ({"stage1": {"epochs": 0}}, "config.mimic.stage1.epochs: 0 is less than the minimum"),
        ({"latency": {"repeat": 3}}, "config.mimic.latency: unknown key(s) ['repeat']"),
    ],
)  # fmt: skip
def test_schema_names_the_bad_key(mimic, expected):
    with pytest.raises(ConfigError) as err:
        cfg_with(mimic)
    assert expected in str(err.value)


def test_cross_checks_name_the_key():
    ok = cfg_with({"targets": {"layers": {"a": 9}}}, similarity={"metrics": {"cka_linear": {}}})
    assert plan.config_problems(ok) == []
    # a valid config made invalid after validation (validation runs these checks too)
    types = {"linear": {"depths": [2]}, "transformer": {"heads": 4, "depths": [1]}}
    bad = cfg_with({"types": types}, similarity={"metrics": {"cka_linear": {}}})
    bad["mimic"]["targets"]["layers"] = {"a": 10, "zz": 2}
    bad["mimic"]["types"]["transformer"]["heads"] = 3
    bad["similarity"]["metrics"] = {"cosine": {}}
    problems = "\n".join(plan.config_problems(bad))
    assert "config.mimic.targets.layers: unknown model(s) ['zz']" in problems
    assert "config.mimic.targets.layers.a: layer 10 out of range 1..9" in problems
    assert "config.mimic.types.transformer.heads: 3 does not divide the hidden size 128" in problems
    assert "config.mimic.targets.metric: 'cka_linear' is not computed by similarity" in problems
    # the metric matters only when mimic is built and some depth-2 cell reads the blocks
    bad["outputs"] = ["similarity"]
    assert "targets.metric" not in "\n".join(plan.config_problems(bad))
    assert "unknown model" in "\n".join(plan.config_problems(bad))
