"""The cross-stage aggregation: which files it builds for which outputs, the baseline table and
the overview computed from synthetic stage tables, and the charts saved offline."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from workflow_scripts.report import aggregate
from workflow_scripts.report import plan as report_plan


def config(*outputs):
    return {"outputs": list(outputs), "models": {"m-a": {}, "m-b": {}},
            "pruning": {"threshold": 0.9}}  # fmt: skip


def test_targets_and_inputs_follow_outputs():
    cfg = config("similarity", "tables")
    targets = report_plan.targets(cfg, "R")
    assert "R/tables/overview.md" in targets and "R/tables/baseline.parquet" in targets
    assert "R/charts/overview.html" in targets and "R/charts/baseline.png" in targets
    assert report_plan.overview_inputs(cfg, "R") == {
        "baseline": "R/tables/baseline.parquet", "blocks": "R/tables/blocks.csv"
    }  # fmt: skip
    full = report_plan.overview_inputs(config("pruning", "mimic", "structured", "tables"), "R")
    assert full == {"baseline": "R/tables/baseline.parquet",
                    "pruning": "R/tables/pruning.parquet", "mimic": "R/tables/mimic.parquet",
                    "structured": "R/tables/structured.parquet"}  # fmt: skip
    # the overview's slice: the stages it combines and the threshold, nothing else
    assert report_plan.overview_slice(cfg) == {"stages": ["similarity"], "threshold": 0.9}
    assert report_plan.overview_slice({"outputs": ["tables"]})["threshold"] == 0.95
    assert report_plan.baseline_inputs(cfg, "R") == {
        "cells": ["R/cells/baseline/m-a.parquet", "R/cells/baseline/m-b.parquet"]
    }  # fmt: skip


def baseline_cells():
    rows = []
    for m, acc, layers in (("m-b", 0.8, 4), ("m-a", 0.6, 3)):
        for split, a in (("validation", acc + 0.05), ("testing", acc)):
            rows.append({"model": m, "split": split, "accuracy": a, "ci_lo": a - 0.1,
                         "ci_hi": a + 0.1, "n": 50, "num_layers": layers,
                         "params_total": 1000 * layers, "per_class_accuracy": [a, a]})  # fmt: skip
    return pd.DataFrame(rows)


def test_baseline_table_keeps_model_order_and_known_columns():
    t = aggregate.baseline_table(baseline_cells())
    assert list(t.model) == ["m-b", "m-b", "m-a", "m-a"]
    assert list(t.split) == ["testing", "validation"] * 2
    assert "per_class_accuracy" not in t and "params_total" in t
    assert list(aggregate.baseline_table(pd.DataFrame()).columns) == aggregate.BASELINE_COLUMNS


def pruning_rows(model, rel, layers):
    """Forward-strategy rows with relative accuracies ``rel`` for n = 0 .. L-1, and a random
    strategy with two seeds (seed 1 is 0.04 lower) and its mean-over-seeds rows."""
    rows = []
    base = 0.8
    for strategy, seeds in (("forward", [None]), ("random", [0, 1, None])):
        for seed in seeds:
            for n, r in enumerate(rel):
                drop = {None: 0.0, 0: 0.0, 1: 0.04}[seed] if strategy == "random" else 0.0
                if strategy == "random" and seed is None:
                    drop = 0.02  # the mean of the two seeds
                r2 = r - drop
                rows.append({"model": model, "strategy": strategy, "seed": seed, "n_removed": n,
                             "n_layers": layers, "accuracy": base * r2, "relative_accuracy": r2,
                             "removed": list(range(1, n + 1)), "total_params": 100 - 10 * n,
                             "latency_ms": 10.0 - n})  # fmt: skip
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def mimic_rows(model, accs, backbone=0.8):
    rows = []
    for (kind, depth), acc in zip([("linear", 1), ("transformer", 1), ("no_mimic", 0)], accs,
                                  strict=True):  # fmt: skip
        rows.append({"model": model, "kind": kind, "depth": depth, "target_layers": [3],
                     "accuracy": acc, "ci_lo": acc - 0.1, "ci_hi": acc + 0.1,
                     "backbone_accuracy": backbone, "stack_params": 1000,
                     "mimicker_params": 100 * (depth + 1), "model_params": 2000,
                     "mimicked_model_params": 1000 + 100 * (depth + 1), "stack_ms": 10.0,
                     "mimicker_ms": 2.0, "model_ms": 20.0, "mimicked_model_ms": 12.0,
                     "batch_size": 4, "device": "cpu"})  # fmt: skip
    return pd.DataFrame(rows)


def test_overview_answers_the_headline_questions_from_the_tables():
    baseline = aggregate.baseline_table(baseline_cells())
    blocks = pd.DataFrame(
        [
            ("m-a", "cka_linear", 1, 3, 3),
            ("m-a", "cka_linear", 0, 0, 2),
            ("m-b", "cosine", 0, 0, 4),
        ],
        columns=["model", "metric", "block", "first_layer", "last_layer"],
    )
    pruning = pd.concat([pruning_rows("m-a", [1.0, 0.97, 0.93], 3),
                         pruning_rows("m-b", [1.0, 0.99, 0.96, 0.5], 4)])  # fmt: skip
    mimic = pd.concat([mimic_rows("m-a", [0.7, 0.76, 0.79]), mimic_rows("m-b", [0.8, 0.6, 0.2])])
    structured = pd.DataFrame({"model": ["m-a", "m-a", "m-b"], "target_sparsity": [0.3, 0.6, 0.3],
                               "achieved_sparsity": [0.31, 0.62, 0.29],
                               "retained": [0.97, 0.9, 0.5]})  # fmt: skip
    ov = aggregate.overview_table(baseline, blocks, pruning, mimic, structured, threshold=0.95)
    assert list(ov.model) == ["m-b", "m-a"]
    ov = ov.set_index("model")
    assert ov.loc["m-a", "test accuracy"] == pytest.approx(0.6)
    assert ov.loc["m-b", "layers"] == 4
    assert ov.loc["m-a", "blocks: cka_linear"] == "0-2 3-3"  # sorted by block
    assert ov.loc["m-b", "blocks: cosine"] == "0-4" and pd.isna(ov.loc["m-b", "blocks: cka_linear"])
    # forward keeps >= 95% up to n = 1 (m-a: 0.93 < 0.95) and n = 2 (m-b)
    assert ov.loc["m-a", "prunable: forward"] == 1 and ov.loc["m-b", "prunable: forward"] == 2
    # random: the mean-over-seeds curve (0.02 lower: n = 1), not seed 0's (2) or seed 1's (0)
    assert ov.loc["m-b", "prunable: random"] == 1
    # best mimicker: highest accuracy retained, no_mimic excluded
    assert ov.loc["m-a", "best mimicker"] == "transformer-1"
    assert ov.loc["m-a", "mimic: accuracy retained %"] == pytest.approx(95.0)
    assert ov.loc["m-b", "best mimicker"] == "linear-1"
    assert ov.loc["m-b", "mimic: param reduction %"] == pytest.approx(100 * (1 - 1200 / 2000))
    assert ov.loc["m-b", "mimic: latency reduction %"] == pytest.approx(40.0)
    assert ov.loc["m-a", "structured: max sparsity"] == pytest.approx(0.31)
    assert math.isnan(ov.loc["m-b", "structured: max sparsity"])

    md = aggregate.overview_markdown(ov.reset_index(), 0.95, ["similarity", "pruning", "mimic"])
    assert md.startswith("# Overview") and "| m-a |" in md and ">= 95%" in md
    long = aggregate.overview_long(ov.reset_index())
    assert set(long.question) == {"blocks prunable", "best mimicker (%)"}
    assert len(long[long.question == "blocks prunable"]) == 4  # 2 models x 2 strategies


def test_overview_with_baseline_only():
    ov = aggregate.overview_table(aggregate.baseline_table(baseline_cells()))
    assert list(ov.columns) == ["model", "test accuracy", "layers"]
    assert "baseline only" in aggregate.overview_markdown(ov, 0.95, [])
    assert aggregate.overview_long(ov).empty


def test_structured_table_without_known_columns_is_left_out():
    baseline = aggregate.baseline_table(baseline_cells())
    ov = aggregate.overview_table(baseline, structured=pd.DataFrame({"model": ["m-a"], "x": [1]}))
    assert not any(c.startswith("structured") for c in ov.columns)


def test_charts_save_as_offline_html_and_png(tmp_path):
    from workflow_scripts.report.charts import save_chart

    baseline = aggregate.baseline_table(baseline_cells())
    pruning = pd.concat([pruning_rows("m-a", [1.0, 0.97, 0.93], 3)])
    ov = aggregate.overview_table(baseline, pruning=pruning)
    save_chart(aggregate.overview_chart(ov), tmp_path / "o.html", tmp_path / "o.png")
    save_chart(aggregate.baseline_chart(baseline), tmp_path / "b.html")
    for name in ("o.html", "b.html"):
        html = (tmp_path / name).read_text()
        assert "vegaEmbed" in html and not re.search(r"<script[^>]+src=", html)
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # no temp files left
