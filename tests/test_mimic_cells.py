"""The mimic grid wiring: which cells exist, what each cell's params hold, the target layers a
depth-2 mimicker gets from a blocks table, the summary table, the schema and cross-checks, the
charts, and (slow, opt-in with MIMIC_E2E=1) one run of the real rules on a tiny workflow."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_scripts.core.config import ConfigError, validate_config
from workflow_scripts.mimic import cells as mc

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
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
    assert mc.grid(cfg) == [
        (m, k, d)
        for m in ("a", "b")
        for k, d in (("linear", 1), ("linear", 2), ("transformer", 1), ("no_mimic", 0))
    ]
    got = mc.targets(cfg, "R")
    cells = [f"R/cells/mimic/{m}/{c}.parquet" for m in ("a", "b")
             for c in ("linear-1", "linear-2", "transformer-1", "no_mimic-0")]  # fmt: skip
    tables = ["R/tables/mimic.parquet", "R/tables/mimic_summary.csv", "R/tables/mimic_summary.md",
              "R/charts/mimic_tradeoff.html", "R/charts/mimic_tradeoff.png",
              "R/charts/mimic_curves.html", "R/charts/mimic_curves.png"]  # fmt: skip
    assert sorted(got) == sorted(cells + tables) and len(got) == len(set(got))


def test_configured_types_and_depths_decide_the_cells():
    cfg = cfg_with({"types": {"transformer": {"depths": [2, 1]}}, "no_mimic": False})
    assert mc.grid(cfg) == [("a", "transformer", 1), ("a", "transformer", 2),
                            ("b", "transformer", 1), ("b", "transformer", 2)]  # fmt: skip
    assert not any("linear" in p or "no_mimic" in p for p in mc.targets(cfg, "R"))


def test_the_tables_rule_writes_what_targets_asks_for():
    """rules/mimic.smk's mimic_tables outputs are exactly table_paths() (no target without rule)."""
    text = (ROOT / "rules/mimic.smk").read_text()
    block = text.split("rule mimic_tables:")[1].split("log:")[0]
    names = re.findall(r'f"\{RESULTS\}/((?:tables|charts)/mimic[\w.]*)"', block)
    assert sorted(names) == sorted(p.removeprefix("R/") for p in mc.table_paths("R").values())


# ------------------------------------------------------------------------ params slices
def test_cell_slice_holds_only_that_mimickers_settings():
    cfg = cfg_with({"types": {"linear": {"depths": [1, 2], "width": 32},
                              "transformer": {"depths": [1], "heads": 4, "ffn": 96}},
                    "targets": {"metric": "cosine", "layers": {"b": 3}}})  # fmt: skip
    lin1 = mc.cell_slice(cfg, "a", "linear", "1")
    assert lin1["layer"] == {"width": 32}  # no heads/ffn/dropout, no depths list
    assert "targets" not in lin1 and "stage1" in lin1 and lin1["depth"] == 1
    tr1 = mc.cell_slice(cfg, "a", "transformer", 1)
    assert tr1["layer"] == {"heads": 4, "ffn": 96, "dropout": 0.1}
    assert mc.cell_slice(cfg, "a", "linear", 2)["targets"] == {
        "metric": "cosine", "pick": "last", "fallback": "even"}  # fmt: skip
    assert mc.cell_slice(cfg, "b", "linear", 2)["targets"] == {"layer": 3}  # only b's layer
    base = mc.cell_slice(cfg, "a", "no_mimic", 0)
    assert "stage1" not in base and "layer" not in base and "targets" not in base
    assert set(base["stage2"]) == {"epochs", "lr", "batch_size"}  # freeze flags do not apply
    assert json.loads(mc.cell_json(cfg, "a", "linear", 1)) == lin1

    # editing the transformer, another model's explicit layer, the targets or the freeze flags
    # leaves exactly the cells that do not use them untouched
    before = {c: mc.cell_json(cfg, *c) for c in mc.grid(cfg)}
    cfg["mimic"]["types"]["transformer"]["ffn"] = 128
    cfg["mimic"]["targets"]["layers"]["b"] = 4
    cfg["mimic"]["targets"]["pick"] = "first"
    cfg["mimic"]["stage2"]["freeze_head"] = True
    changed = {c for c in before if mc.cell_json(cfg, *c) != before[c]}
    assert changed == {("a", "transformer", 1), ("b", "transformer", 1), ("a", "linear", 2),
                       ("b", "linear", 2), ("a", "linear", 1), ("b", "linear", 1)}  # fmt: skip
    cfg["mimic"]["stage2"]["freeze_head"] = False
    changed = {c for c in before if mc.cell_json(cfg, *c) != before[c]}
    assert changed == {("a", "transformer", 1), ("b", "transformer", 1), ("a", "linear", 2),
                       ("b", "linear", 2)}  # fmt: skip


def test_unconfigured_cells_are_refused():
    cfg = cfg_with({"types": {"linear": {"depths": [1]}}})
    with pytest.raises(ValueError, match="'transformer' is not configured"):
        mc.cell_slice(cfg, "a", "transformer", 1)
    with pytest.raises(ValueError, match="depth 1 or 2"):
        mc.cell_slice(cfg, "a", "linear", 3)
    with pytest.raises(ValueError, match="depth 0"):
        mc.cell_slice(cfg, "a", "no_mimic", 1)


def test_cell_inputs_need_blocks_only_for_depth_2_from_blocks():
    cfg = cfg_with({"targets": {"layers": {"b": 3}}})
    assert mc.cell_inputs(cfg, "R", "a", "linear", "2")["blocks"] == "R/blocks/a/cka_linear.csv"
    assert "blocks" not in mc.cell_inputs(cfg, "R", "b", "linear", "2")  # explicit layer
    ins = mc.cell_inputs(cfg, "R", "a", "linear", "1")
    assert ins == {
        "model": "R/finetuned/a",
        "train_cache": "R/cache/a/training.safetensors",
        "val_cache": "R/cache/a/validation.safetensors",
        "test_cache": "R/cache/a/testing.safetensors",
        "manifest": "R/data/manifest.parquet",
        "baseline": "R/cells/baseline/a.parquet",
    }
    cfg = cfg_with({"targets": {"metric": None}})
    assert "blocks" not in mc.cell_inputs(cfg, "R", "a", "linear", "2")


# ----------------------------------------------------------------------- target layers
def blocks_df():
    rows = [("a", "cka_linear", 0, 3), ("a", "cka_linear", 4, 7), ("a", "cka_linear", 8, 10),
            ("a", "cosine", 0, 10), ("b", "cka_linear", 0, 2),
            ("b", "cka_linear", 3, 6)]  # fmt: skip
    df = pd.DataFrame(rows, columns=["model", "metric", "first_layer", "last_layer"])
    df["n_layers"] = df.model.map({"a": 11, "b": 7})
    return df.sample(frac=1, random_state=0)  # the order of the rows must not matter


def test_target_layers_from_a_blocks_table():
    b = blocks_df()
    t = {"metric": "cka_linear", "pick": "last", "fallback": "even"}
    assert mc.target_layers(2, 10, "a", t, b) == ([3, 10], "blocks:cka_linear:last")
    assert mc.target_layers(2, 10, "a", {**t, "pick": "first"}, b)[0] == [1, 10]  # never 0
    assert mc.target_layers(2, 10, "a", {**t, "pick": "middle"}, b)[0] == [2, 10]
    assert mc.target_layers(2, 6, "b", t, b) == ([2, 6], "blocks:cka_linear:last")
    assert mc.target_layers(1, 10, "a", t, b) == ([10], "last")
    assert mc.target_layers(2, 10, "a", {"layer": 6}, None) == ([6, 10], "explicit")
    assert mc.target_layers(2, 10, "a", {"metric": None}, None) == ([5, 10], "even")
    # one block spanning everything: nothing before the last layer
    layers, source = mc.target_layers(2, 10, "a", {**t, "metric": "cosine"}, b)
    assert layers == [5, 10] and source.startswith("even (fallback: cosine blocks [[0, 10]]")
    with pytest.raises(ValueError, match="needs 1 intermediate target"):
        mc.target_layers(2, 10, "a", {**t, "metric": "cosine", "fallback": "error"}, b)
    with pytest.raises(ValueError, match="no blocks of model 'a' for metric 'mutual_knn'"):
        mc.target_layers(2, 10, "a", {**t, "metric": "mutual_knn"}, b)
    with pytest.raises(ValueError, match="stale"):
        mc.target_layers(2, 12, "a", t, b)
    with pytest.raises(ValueError, match="out of range"):
        mc.target_layers(2, 10, "a", {"layer": 11}, None)


# ------------------------------------------------------- stage 2 with a frozen mimicker
@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_frozen_outputs_make_stage2_identical_to_running_the_frozen_mimicker(kind):
    """The cell trains the head on precomputed outputs of a frozen mimicker (an identity
    mimicker in stage 2): same history and same head as train_stage2 with the mimicker."""
    import numpy as np
    import torch
    from torch import nn

    from workflow_scripts.mimic import core as mimic

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 16)).astype(np.float16)
    y = rng.integers(0, 3, 40)
    torch.manual_seed(0)
    m = mimic.Mimicker(kind, 1, 16, width=8, heads=2, ffn=8)
    head = mimic.ClassifierHead(nn.Linear(16, 8), nn.Linear(8, 3))
    h1, h2 = copy.deepcopy(head), copy.deepcopy(head)
    quiet = lambda *_: None  # noqa: E731
    tr, va = np.arange(30), np.arange(30, 40)
    ref = mimic.train_stage2(m, h1, x, y, tr, va, 3, batch_size=8, log=quiet)
    feats = mc.frozen_outputs(m, x, batch_size=7)
    assert feats.dtype == np.float32 and feats.shape == x.shape
    got = mimic.train_stage2(mimic.no_mimic(16), h2, feats, y, tr, va, 3, batch_size=8, log=quiet)
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
            "device": "cpu"}  # fmt: skip


def test_summary_table_known_answer():
    cells = pd.DataFrame([
        cell_row("m2", "linear", 1, 0.80, 0.80, 1000, 10, 1500, 510, 40.0, 2.0, 50.0, 12.0),
        cell_row("m1", "no_mimic", 0, 0.45, 0.90, 1000, 0, 1500, 500, 40.0, 0.0, 50.0, 10.0),
        cell_row("m1", "transformer", 1, 0.90, 0.90, 1000, 200, 1500, 700, 40.0, 10.0, 50.0, 20.0),
        cell_row("m1", "linear", 2, 0.855, 0.90, 1000, 50, 1500, 550, 40.0, 4.0, 50.0, 25.0),
    ])  # fmt: skip
    s = mc.summary_table(cells)
    assert list(s.columns) == mc.SUMMARY_COLUMNS
    order = [("m2", "linear-1"), ("m1", "linear-2"), ("m1", "transformer-1"), ("m1", "no_mimic-0")]
    assert list(zip(s.model, s.mimicker, strict=True)) == order
    r = s.set_index(["model", "mimicker"])
    assert r.loc[("m1", "linear-2"), "accuracy_retained_pct"] == pytest.approx(95.0)
    assert r.loc[("m1", "no_mimic-0"), "accuracy_retained_pct"] == pytest.approx(50.0)
    assert list(s.retains_95pct) == [True, True, True, False]
    assert r.loc[("m1", "linear-2"), "stack_param_reduction_pct"] == pytest.approx(95.0)
    assert r.loc[("m1", "transformer-1"), "model_param_reduction_pct"] == pytest.approx(
        100 * 8 / 15
    )
    assert r.loc[("m1", "linear-2"), "stack_latency_reduction_pct"] == pytest.approx(90.0)
    assert r.loc[("m1", "linear-2"), "model_latency_reduction_pct"] == pytest.approx(50.0)
    assert r.loc[("m2", "linear-1"), "target_layers"] == "10"
    assert r.loc[("m1", "linear-2"), "target_layers"] == "4,10"
    assert r.loc[("m1", "linear-2"), "latency_batch_size"] == 8
    md = mc.to_markdown(s)
    lines = md.splitlines()
    assert len(lines) == 2 + len(s) and lines[1].startswith("| --- |")
    assert "| m1 | linear-2 | linear | 2 | 4,10 | 0.85 |" in md  # 0.855 rounds to 2 digits
    assert mc.summary_table(cells.iloc[:0]).columns.tolist() == mc.SUMMARY_COLUMNS


def test_tradeoff_and_curve_charts_are_offline_html_and_png(tmp_path):
    from workflow_scripts.report.charts import mimic_curves_chart, mimic_tradeoff_chart, save_chart

    cells = pd.DataFrame([
        cell_row("m1", "linear", 1, 0.85, 0.90, 1000, 10, 1500, 510, 40.0, 2.0, 50.0, 12.0),
        cell_row("m1", "no_mimic", 0, 0.45, 0.90, 1000, 0, 1500, 500, 40.0, 0.0, 50.0, 10.0),
    ])  # fmt: skip
    long = mc.tradeoff_long(mc.summary_table(cells))
    assert len(long) == 2 * 3 and set(long.cost) == {
        "parameters: stack vs mimicker", "latency: stack vs mimicker",
        "latency: full vs mimicked model"}  # fmt: skip
    curves = pd.DataFrame({"model": "m1", "kind": "linear", "depth": 1, "stage": [1, 1, 2],
                           "epoch": [1, 2, 1], "train_loss": [1.0, 0.5, 2.0],
                           "val_loss": [1.1, 0.6, 2.1]})  # fmt: skip
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
    assert mc.config_problems(ok) == []
    types = {"linear": {"depths": [2]}, "transformer": {"heads": 3, "depths": [1]}}
    bad = cfg_with({"targets": {"layers": {"a": 10, "zz": 2}}, "types": types},
                   similarity={"metrics": {"cosine": {}}})  # fmt: skip
    problems = "\n".join(mc.config_problems(bad))
    assert "config.mimic.targets.layers: unknown model(s) ['zz']" in problems
    assert "config.mimic.targets.layers.a: layer 10 out of range 1..9" in problems
    assert "config.mimic.types.transformer.heads: 3 does not divide the hidden size 128" in problems
    assert "config.mimic.targets.metric: 'cka_linear' is not computed by similarity" in problems
    # the metric matters only when mimic is built and some depth-2 cell reads the blocks
    bad["outputs"] = ["similarity"]
    assert "targets.metric" not in "\n".join(mc.config_problems(bad))
    with pytest.raises(ConfigError, match="unknown model"):
        mc.check_config(bad)


# ------------------------------------------------------------------ the real workflow
def run_smk(cwd, *args, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


COPY = ["Snakefile", "rules", "workflow_scripts", "config", "envs", "profiles"]


def project_copy(d: Path, cfg: dict) -> Path:
    for name in COPY:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / name)
    (d / "models").symlink_to(ROOT / "models")  # the shipped backbones (read-only)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_bad_mimic_config_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["outputs"] = ["mimic"]
    cfg["mimic"] = {"targets": {"layers": {"hubert-small": 10}}}
    proc = run_smk(project_copy(tmp_path, cfg), "-n")
    assert proc.returncode != 0
    assert "config.mimic.targets.layers.hubert-small: layer 10 out of range 1..9" in (
        proc.stdout + proc.stderr
    )
    assert not (tmp_path / "results").exists()


def test_default_config_plans_one_mimic_job_per_cell(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["outputs"] = list(dict.fromkeys([*cfg["outputs"], "mimic"]))
    proc = run_smk(project_copy(tmp_path, cfg), "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-2000:]
    n = len(mc.grid(validate_config(copy.deepcopy(cfg))))
    assert re.search(rf"mimic_cell\s+{n}\b", proc.stdout), proc.stdout
    assert re.search(r"mimic_tables\s+1\b", proc.stdout)
    # the mimickers need each model's training- and testing-split caches besides validation
    assert re.search(rf"hidden_cache\s+{3 * len(cfg['models'])}\b", proc.stdout), proc.stdout


TINY_MODEL = {"arch": "hubert", "layers": 3, "hidden": 32, "heads": 2, "ffn": 64,
              "conv_dim": [16, 32, 32], "steps": 3, "batch_size": 8, "clusters": 8}  # fmt: skip
TINY = {
    "corpus": {"speakers": 12, "seed": 1, "validation_percentage": 30, "testing_percentage": 30,
               "words": ["yes", "no", "up"], "voices": ["en-us", "en-029"], "variants": ["", "m3"]},
    "outputs": ["mimic"],
    "models": {"tiny-a": {"pretrain": TINY_MODEL}},
    "finetune": {"steps": 4, "batch_size": 8},
    "cache": {"clips": 20, "batch_size": 10},
    "similarity": {"n_boot": 10, "metrics": {"cosine": {}, "cka_linear": {}},
                   "blocks": {"knn_k": 2}},
    "mimic": {"types": {"linear": {"depths": [1, 2], "width": 8},
                        "transformer": {"depths": [1], "heads": 2, "ffn": 16}},
              "stage1": {"epochs": 2, "batch_size": 8}, "stage2": {"epochs": 2, "batch_size": 8},
              "latency": {"batch_size": 4, "warmup": 1, "repeats": 2}},
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MIMIC_E2E"),
    reason="minutes long; set MIMIC_E2E=1 (tests/test_workflow.py's tiny grid already runs a "
    "mimic cell end to end)",
)
def test_tiny_mimic_grid_end_to_end(tmp_path):
    from workflow_scripts.core.provenance import read_provenance

    d = project_copy(tmp_path, TINY)
    proc = run_smk(d)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = d / "results"
    names = ["linear-1", "linear-2", "transformer-1", "no_mimic-0"]
    for name in names:
        cell = pd.read_parquet(res / f"cells/mimic/tiny-a/{name}.parquet")
        assert len(cell) == 1
        r = cell.iloc[0]
        assert 0 <= r.accuracy <= 1 and r.ci_lo <= r.accuracy <= r.ci_hi
        assert r.accuracy_retained == pytest.approx(r.accuracy / r.backbone_accuracy)
        assert r.backbone_accuracy_source == "baseline cell"
        # the mimicked model on raw audio gives the cached path's logits (float16 features)
        assert r.raw_audio_check_clips == 4 and r.raw_audio_check_agreement == 1.0
        assert r.raw_audio_check_max_abs_diff < 0.05
        assert r.mimicker_params < r.stack_params and r.batch_size == 4
        prov = read_provenance(res / f"cells/mimic/tiny-a/{name}.parquet")
        assert json.loads(prov["config_slice"])["kind"] == r.kind
        assert {"model", "train_cache", "val_cache", "test_cache"} <= set(
            json.loads(prov["inputs_sha256"])
        )
        curves = pd.read_parquet(res / f"cells/mimic/tiny-a/{name}.curves.parquet")
        assert list(curves.stage) == ([1, 1, 2, 2] if r.kind != "no_mimic" else [2, 2])
        assert curves.best.sum() == curves.stage.nunique()
    targets = {n: list(pd.read_parquet(res / f"cells/mimic/tiny-a/{n}.parquet").target_layers[0])
               for n in names}  # fmt: skip
    assert targets["linear-1"] == [3] and targets["no_mimic-0"] == []
    assert len(targets["linear-2"]) == 2 and 1 <= targets["linear-2"][0] < 3
    assert pd.read_parquet(res / "cells/mimic/tiny-a/no_mimic-0.parquet").mimicker_params[0] == 0
    # the training-split cache holds its own number of clips (cache.train_clips or cache.clips)
    from workflow_scripts.backbones.cache import cache_info

    n_train = cache_info(res / "cache/tiny-a/training.safetensors")["shapes"]["labels"][0]
    assert n_train == pd.read_parquet(res / "cells/mimic/tiny-a/linear-1.parquet").train_clips[0]
    summary = pd.read_csv(res / "tables/mimic_summary.csv")
    assert list(summary.mimicker) == names
    assert (res / "charts/mimic_tradeoff.png").stat().st_size > 1000
    assert (res / "charts/mimic_curves.html").stat().st_size > 1000
    # nothing left to do; a transformer setting reruns the transformer cell and the tables only
    assert "Nothing to be done" in run_smk(d, "-n").stdout
    cfg = copy.deepcopy(TINY)
    cfg["mimic"]["types"]["transformer"]["ffn"] = 24
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = run_smk(d, "-n", "--quiet", "rules").stdout
    assert re.search(r"mimic_cell\s+1\b", out) and re.search(r"mimic_tables\s+1\b", out), out
    assert "hidden_cache" not in out and "finetune" not in out
