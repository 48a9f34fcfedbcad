"""The cross-stage aggregation: which files it builds for which outputs, the baseline table and
the overview computed from synthetic stage tables, and the charts saved offline."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.report import aggregate
from workflow_scripts.report import plan as report_plan
from workflow_scripts.report.overview import (
    overview_chart,
    overview_markdown,
    overview_table,
    speechllm_rows,
)
from workflow_scripts.report.pareto import pareto_table
from workflow_scripts.speechllm.report import display


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
    sllm = report_plan.overview_inputs(config("speechllm", "tables"), "R")
    assert sllm["speechllm_summary"] == "R/tables/speechllm_summary.csv"
    assert sllm["speechllm_overlap"] == "R/tables/speechllm_overlap.csv"
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


def mimic_rows(model, accs, backbone=0.8, val_accs=None):
    """linear-1, transformer-1 and no_mimic cells with test accuracies ``accs`` and validation
    accuracies ``val_accs`` (default: the test accuracies + 0.01)."""
    rows = []
    val_accs = val_accs or [a + 0.01 for a in accs]
    for (kind, depth), acc, val in zip([("linear", 1), ("transformer", 1), ("no_mimic", 0)],
                                       accs, val_accs, strict=True):  # fmt: skip
        rows.append({"model": model, "kind": kind, "depth": depth, "target_layers": [3],
                     "accuracy": acc, "ci_lo": acc - 0.1, "ci_hi": acc + 0.1, "val_accuracy": val,
                     "backbone_accuracy": backbone, "stack_params": 1000,
                     "mimicker_params": 100 * (depth + 1), "model_params": 2000,
                     "mimicked_model_params": 1000 + 100 * (depth + 1), "stack_ms": 10.0,
                     "mimicker_ms": 2.0, "model_ms": 20.0, "mimicked_model_ms": 12.0,
                     "batch_size": 4, "device": "cpu"})  # fmt: skip
    return pd.DataFrame(rows)


def structured_rows():
    return pd.DataFrame({"model": ["m-a", "m-a", "m-b"], "target_sparsity": [0.3, 0.6, 0.3],
                         "achieved_sparsity": [0.31, 0.62, 0.29], "retained": [0.97, 0.9, 0.5],
                         "accuracy": [0.58, 0.54, 0.4], "ci_lo": [0.5, 0.45, 0.3],
                         "ci_hi": [0.66, 0.63, 0.5], "total_params": [80, 60, 90],
                         "latency_ms": [5.0, 4.0, 6.0], "base_latency_ms": [10.0] * 3,
                         "n_utterances": [50] * 3})  # fmt: skip


def overview_of(**extra):
    baseline = aggregate.baseline_table(baseline_cells())
    blocks = pd.DataFrame(
        [("m-a", "cka_linear", 1, 3, 3), ("m-a", "cka_linear", 0, 0, 2),
         ("m-b", "cosine", 0, 0, 4)],
        columns=["model", "metric", "block", "first_state", "last_state"],
    )  # fmt: skip
    # m-a dips below 95% at n = 1 and recovers at n = 2: the headline must stop at 0
    pruning = pd.concat([pruning_rows("m-a", [1.0, 0.93, 0.97], 3),
                         pruning_rows("m-b", [1.0, 0.99, 0.96, 0.5], 4)])  # fmt: skip
    mimic = pd.concat([mimic_rows("m-a", [0.7, 0.76, 0.79]), mimic_rows("m-b", [0.8, 0.6, 0.2])])
    tables = {"blocks": blocks, "pruning": pruning, "mimic": mimic, "structured": structured_rows()}
    tables.update(extra)
    stages = {k: tables[k] for k in ("pruning", "mimic", "structured")}
    pareto = pareto_table(**stages)
    return overview_table(baseline, pareto=pareto, threshold=0.95, **tables), pareto


def test_overview_answers_the_headline_questions_from_the_tables():
    ov, _ = overview_of()
    assert list(dict.fromkeys(ov.model)) == ["m-b", "m-a"]
    row = {(r.model, r.finding.split(" (")[0], r.method): r for r in ov.itertuples(index=False)}
    base = row[("m-a", "fine-tuned model", "unpruned")]
    assert base.accuracy_pct == pytest.approx(60.0) and base.result.startswith("3 layers")
    assert base.ci_pct == "50.0-70.0" and base.eval_clips == 50  # percent, CI and n
    assert row[("m-a", "groups of similar layers", "cka_linear")].result == "input-2, 3-3"
    assert row[("m-b", "groups of similar layers", "cosine")].result == "input-4"
    # the prefix headline: m-a's forward curve dips at n = 1, so 0 layers (the dip-allowed
    # count, 2, is given beside it); m-b keeps 95% up to n = 2
    fwd_a = row[("m-a", "layers removable", "forward")]
    assert fwd_a.result.startswith("0 of 3 layers") and fwd_a.meets_threshold is None
    assert fwd_a.also.startswith("2 if a dip below 95%")
    fwd_b = row[("m-b", "layers removable", "forward")]
    assert fwd_b.result == "2 of 4 layers (50%): 2 3" and fwd_b.retained_pct == pytest.approx(96.0)
    assert fwd_b.meets_threshold is True and fwd_b.also == ""
    # random: the mean-over-seeds curve (0.02 lower: n = 1), not a single seed's
    assert row[("m-b", "layers removable", "random")].result.startswith("1 of 4")
    # best mimicker: highest accuracy retained, no_mimic excluded; meets flag
    mim = row[("m-a", "best mimicker", "transformer-1")]
    assert mim.retained_pct == pytest.approx(95.0) and mim.meets_threshold is True
    assert mim.result == (
        f"{100 * (1 - 1200 / 2000):.0f}% fewer whole-model parameters "
        "(80% of the stack's), 1.67x faster"
    )  # denominators named
    assert row[("m-b", "best mimicker", "linear-1")].retained_pct == pytest.approx(100.0)
    # structured: the highest target tried, named so
    st = row[("m-a", "structured pruning", "target 60%")]
    assert st.retained_pct == pytest.approx(90.0) and st.meets_threshold is False
    assert "2.50x faster" in st.result
    md = overview_markdown(ov, 0.95, ["similarity", "pruning", "mimic"])
    assert md.startswith("# Overview") and "## m-a" in md and "meets 95%" in md
    assert "state 0 (`input`)" in md


def test_pareto_frontier_on_a_constructed_example():
    from workflow_scripts.report.pareto import frontier, smallest_meeting

    params = np.array([100, 80, 80, 60, 40, 40])
    acc = np.array([0.90, 0.89, 0.85, 0.86, 0.50, 0.50])
    # (80, .85) is beaten by (80, .89); (60, .86) is not beaten (nothing smaller is better);
    # the two equal (40, .5) points do not dominate each other
    assert frontier(params, acc).tolist() == [True, True, False, True, True, True]
    _, pareto = overview_of()
    a = pareto[pareto.model == "m-a"]
    assert a.frontier.any() and (a.family == "unpruned").sum() == 1
    for r in a[a.frontier].itertuples():
        better = a[(a.total_params <= r.total_params) & (a.accuracy_pct > r.accuracy_pct)]
        assert better.empty
    best = smallest_meeting(pareto)
    assert set(best.model) <= {"m-a", "m-b"}
    assert (best.retained_pct >= 95).all() and best.frontier.all()


def test_best_mimicker_is_chosen_on_validation_accuracy():
    """Validation and test disagree on the best mimicker: the overview names the one the
    validation split picks (linear-1 for m-a, transformer-1 for m-b) and reports its test
    accuracy; picking on the test set would name the other."""
    mimic = pd.concat([
        mimic_rows("m-a", [0.70, 0.78, 0.79], val_accs=[0.80, 0.75, 0.90]),
        mimic_rows("m-b", [0.80, 0.60, 0.20], val_accs=[0.70, 0.72, 0.10]),
    ])  # fmt: skip
    ov = overview_table(aggregate.baseline_table(baseline_cells()), mimic=mimic)
    best = ov[ov.finding.str.startswith("best mimicker")].set_index("model")
    assert best.loc["m-a", "method"] == "linear-1" and best.loc["m-b", "method"] == "transformer-1"
    assert best.loc["m-a", "accuracy_pct"] == pytest.approx(70.0)  # its test accuracy
    assert best.loc["m-a", "retained_pct"] == pytest.approx(87.5)
    assert best.loc["m-a", "also"] == "chosen on validation accuracy (80.0%)"
    # a tie on validation: the smaller mimicked model
    tie = mimic_rows("m-a", [0.70, 0.78, 0.79], val_accs=[0.75, 0.75, 0.75])
    ov = overview_table(aggregate.baseline_table(baseline_cells()), mimic=tie)
    assert ov[ov.finding.str.startswith("best mimicker")].method.tolist() == ["linear-1"]
    with pytest.raises(KeyError, match="val_accuracy"):
        overview_table(aggregate.baseline_table(baseline_cells()),
                       mimic=tie.drop(columns="val_accuracy"))  # fmt: skip


def test_pareto_params_pct_is_of_the_unpruned_model_without_the_pruning_stage():
    """Without layer pruning no point is the unpruned model: ``params_pct`` is still in % of
    the unpruned model's parameters (the mimic cells' ``model_params``, the structured
    cells' ``base_total_params``), not of the largest compressed model."""
    mimic = mimic_rows("m-a", [0.7, 0.76, 0.79])  # model 2000, mimicked 1200 / 1200 / 1100
    t = pareto_table(mimic=mimic)
    pct = dict(zip(t.method, t.params_pct, strict=True))
    assert pct == pytest.approx({"no_mimic-0": 55.0, "linear-1": 60.0, "transformer-1": 60.0})
    structured = structured_rows().assign(base_total_params=[100, 100, 120])
    t = pareto_table(structured=structured)
    assert t.params_pct.tolist() == pytest.approx([60.0, 80.0, 75.0])  # m-a by size, then m-b
    # with the pruning stage its n = 0 row is the reference, as before
    pr = pruning_rows("m-a", [1.0, 0.99, 0.97], 3)  # unpruned 100 parameters
    t = pareto_table(pruning=pr, structured=structured[structured.model == "m-a"])
    assert t.loc[t.family == "unpruned", "params_pct"].tolist() == [100.0]
    assert t.loc[t.family == "structured pruning", "params_pct"].tolist() == [60.0, 80.0]
    # no stage knows the count: no percentage rather than a wrong one
    assert pareto_table(structured=structured_rows()).params_pct.isna().all()


def test_pareto_has_every_pruning_setting_once():
    """Each (model, strategy, layers removed) is one point, the unpruned model one point per
    model, even when the pruning table repeats rows (a cell stacked twice)."""
    pr = pd.concat([pruning_rows("m-a", [1.0, 0.99, 0.97], 3)] * 2, ignore_index=True)
    t = pareto_table(pruning=pr)
    assert (t.family == "unpruned").sum() == 1
    pruned = t[t.family == "layer pruning"]
    assert not pruned.duplicated(["model", "method", "setting"]).any()
    assert sorted(zip(pruned.method, pruned.setting, strict=True)) == [
        (s, f"{n} of 3 layers removed") for s in ("forward", "random") for n in (1, 2)]  # fmt: skip


def test_overview_with_baseline_only():
    ov = overview_table(aggregate.baseline_table(baseline_cells()))
    assert set(ov.finding) == {"fine-tuned model (test accuracy)"}
    assert "baseline only" in overview_markdown(ov, 0.95, [])


def test_charts_save_as_offline_html_and_png(tmp_path):
    from workflow_scripts.report.charts import save_chart

    ov, _ = overview_of()
    save_chart(overview_chart(ov), tmp_path / "o.html", tmp_path / "o.png")
    save_chart(aggregate.baseline_chart(aggregate.baseline_table(baseline_cells())),
               tmp_path / "b.html")  # fmt: skip
    for name in ("o.html", "b.html"):
        html = (tmp_path / name).read_text()
        assert "vegaEmbed" in html and not re.search(r"<script[^>]+src=", html)
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # no temp files left


def chart_overview():
    """An overview of three models (one row without an accuracy retained, one past 110%)."""
    rows = []
    for model, (kept, other) in {"m-a": (84.8, 96.0), "m-b": (80.4, 118.0),
                                 "m-c": (0.0, 97.0)}.items():  # fmt: skip
        rows += [
            {"model": model, "finding": "fine-tuned model (test accuracy)", "method": "unpruned",
             "retained_pct": 100.0, "meets_threshold": None},
            {"model": model, "finding": "groups of similar layers", "method": "cosine",
             "retained_pct": np.nan, "meets_threshold": None},
            {"model": model, "finding": "structured pruning (highest target tried)",
             "method": "target 60%", "retained_pct": kept, "meets_threshold": False},
            {"model": model, "finding": "best mimicker (replaces the stack)",
             "method": "linear-1", "retained_pct": other, "meets_threshold": True},
        ]  # fmt: skip
    ov = pd.DataFrame(rows).assign(result="r", accuracy_pct=50.0, ci_pct="", also="")
    ov["eval_clips"] = pd.array([50] * len(ov), dtype="Int64")
    return ov


def svg_panels(svg: str) -> list[list[dict]]:
    """The bars of a rendered faceted bar chart, panel by panel: each bar's aria label
    fields, its left and right end (px from the panel's left) and its fill."""
    panels = []
    for part in svg.split('child_layer_0_marks"')[1:]:
        bars = []
        for attrs in re.findall(r"<path ([^>]*)/>", part.split("</g>")[0]):
            label = re.search(r'aria-label="([^"]*)"', attrs).group(1)
            fields = dict(f.split(": ", 1) for f in label.split("; "))
            x0, w = map(float, re.search(r'd="M([-\d.e]+),[-\d.e]+h([-\d.e]+)', attrs).groups())
            fill = re.search(r'fill="([^"]*)"', attrs).group(1)
            bars.append({**fields, "x0": x0, "x1": x0 + w, "fill": fill})
        panels.append(bars)
    return panels


def test_overview_chart_has_one_panel_per_model_within_its_axis(tmp_path):
    """The overview chart (results/charts/overview.png): one data source at the top level
    that the facet splits, so each model's panel shows its own bars only (the layers used to
    carry their own data, so every panel stacked all models' bars end to end, past the axis);
    the x axis reaches past every value; meets the threshold reads as good (blue), below as
    a warning (orange), no verdict grey. Checked on the spec and on the rendered SVG."""
    import vl_convert as vlc

    from workflow_scripts.report.charts import save_chart
    from workflow_scripts.report.overview import CHART_COLORS

    ov = chart_overview()
    chart = overview_chart(ov, 0.95)
    spec = chart.to_dict()
    assert "data" in spec and all("data" not in layer for layer in spec["spec"]["layer"])
    assert len(spec["datasets"]) == 1
    row = spec["facet"]["row"]
    assert row["field"] == "model" and row["sort"] == ["m-a", "m-b", "m-c"]
    (values,) = spec["datasets"].values()
    assert len(values) == 9  # the rows with an accuracy retained
    x_max = {layer["encoding"]["x"]["scale"]["domain"][1] for layer in spec["spec"]["layer"]}
    assert len(x_max) == 1 and max(v["value"] for v in values) <= x_max.pop()
    assert {v["threshold_pct"] for v in values} == {95.0}
    color = spec["spec"]["layer"][0]["encoding"]["color"]["scale"]
    assert dict(zip(color["domain"], color["range"], strict=True)) == CHART_COLORS

    panels = svg_panels(vlc.vegalite_to_svg(spec))
    width = spec["spec"]["width"]
    assert [sorted({b["model"] for b in p}) for p in panels] == [["m-a"], ["m-b"], ["m-c"]]
    for panel in panels:
        assert [b["label"] for b in panel] == [
            "fine-tuned model: unpruned", "structured pruning: target 60%",
            "best mimicker: linear-1"]  # fmt: skip
        for b in panel:
            assert b["x0"] == 0 and b["x1"] <= width + 1e-6  # from 0, within the axis
            assert b["fill"] == CHART_COLORS[b["verdict"]]
    verdicts = {(b["model"], b["method"]): b["verdict"] for p in panels for b in p}
    assert verdicts[("m-b", "linear-1")] == "meets" and verdicts[("m-a", "target 60%")] == "below"
    assert verdicts[("m-c", "unpruned")] == "no verdict"
    save_chart(chart, tmp_path / "o.html", tmp_path / "o.png")
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"


def test_overview_has_the_speechllm_decoders_headline():
    """The SpeechLLM section: per SpeechLLM x task x strategy the prefix count of removable
    decoder layers within the WER threshold, and one overlap row per factor."""
    summary = pd.DataFrame([
        {"model": "s-a", "task": "asr", "strategy": "angular_block", "n_layers": 8,
         "base_wer": 0.2, "threshold": 0.25, "max_removed_prefix": 3, "wer_at_max": 0.24,
         "healed_n": 2, "wer_before_heal": 0.3, "wer_after_heal": 0.22},
        {"model": "s-a", "task": "st", "strategy": "random", "n_layers": 8, "base_wer": 0.3,
         "threshold": 0.25, "max_removed_prefix": 0, "wer_at_max": 0.3, "healed_n": np.nan,
         "wer_before_heal": np.nan, "wer_after_heal": np.nan},
    ])  # fmt: skip
    overlap = pd.DataFrame([
        {"model": "s-a", "task": "asr", "input": "text", "n": 2, "blocks": "[2, 3]",
         "mean_jaccard": np.nan, "identical_share": np.nan, "pairs": np.nan},
        {"model": "across task", "task": None, "input": None, "n": 2, "blocks": None,
         "mean_jaccard": 0.5, "identical_share": 0.25, "pairs": 4.0},
    ])  # fmt: skip
    summary["removed_at_prefix"] = [[3, 4, 5], []]
    rows = speechllm_rows(display("summary", summary), display("overlap", overlap))
    col = "removable (ΔWER ≤ 0.25)"
    assert list(rows[col]) == ["3 of 8 decoder layers (37.5%): 4 5 6",
                               "0 of 8 decoder layers (0.0%)",
                               "Jaccard 0.50, identical 25% (block of 2, 4 pairs)"]  # fmt: skip
    assert (
        rows["healed WER %"].iloc[0] == "n=2: 30.0 -> 22.0" and rows["healed WER %"].iloc[1] == ""
    )
    assert rows["unpruned WER %"].iloc[0] == pytest.approx(20.0)
    md = overview_markdown(overview_table(baseline_cells()), 0.95, [], rows)
    assert "## SpeechLLM decoders" in md and "3 of 8 decoder layers (37.5%): 4 5 6" in md
    assert "SpeechLLM" not in overview_markdown(overview_table(baseline_cells()), 0.95, [])
