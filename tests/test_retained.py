"""Decisions with uncertainty (issue #26): the paired bootstrap interval of the accuracy
retained (workflow_scripts.core.retained), the per-clip predictions every evaluated model state
leaves (layer pruning, mimickers, structured pruning, the baseline), and the verdicts on the
point estimate and with confidence in the summaries and the overview."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.core.retained import (
    correct_of,
    meets_with_confidence,
    predictions_frame,
    retained_interval,
    retained_intervals,
)


# ----------------------------------------------------------------------------------------
# the paired bootstrap on constructed examples
# ----------------------------------------------------------------------------------------
def test_identical_predictions_retain_exactly_one_with_a_zero_width_interval():
    rng = np.random.default_rng(0)
    base = rng.random(300) < 0.7
    assert retained_interval(base.copy(), base) == (1.0, 1.0, 1.0)
    # also pooled over runs that all equal the base
    assert retained_interval(np.stack([base, base, base]), base) == (1.0, 1.0, 1.0)


def subset_example(copies: int) -> tuple[np.ndarray, np.ndarray]:
    """The base right on 80 of 100 clips, the state right on 72 of those 80 (and on none of
    the other 20), repeated ``copies`` times: retained exactly 72 / 80 = 0.9."""
    base = np.r_[np.ones(80), np.zeros(20)].astype(bool)
    state = np.r_[np.ones(72), np.zeros(28)].astype(bool)
    return np.tile(state, copies), np.tile(base, copies)


def test_a_state_right_on_a_subset_retains_its_share_and_the_interval_narrows():
    widths = []
    for copies in (1, 4, 16):
        state, base = subset_example(copies)
        r, lo, hi = retained_interval(state, base)
        assert r == pytest.approx(0.9, abs=1e-12)
        assert lo < r < hi <= 1.0  # a subset never retains more than all of it
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # the paired interval is narrower than the ratio of two independent accuracy intervals
    # would suggest: the share of the base's correct clips the state keeps is binomial,
    # sd sqrt(0.9 * 0.1 / 80) = 0.034 for 100 clips -> width about 4 sd
    assert widths[0] == pytest.approx(4 * math.sqrt(0.9 * 0.1 / 80), rel=0.25)


def test_the_interval_is_seeded_and_shared_by_the_states():
    state, base = subset_example(2)
    a = retained_intervals([state, base], base, seed=3)
    assert a == retained_intervals([state, base], base, seed=3)
    assert a[1] == (1.0, 1.0, 1.0)
    assert retained_interval(state, base, seed=4) != a[0]
    assert retained_interval(state, base, n_boot=0)[1:] != retained_interval(state, base)[1:]
    assert all(math.isnan(v) for v in retained_interval(state, base, n_boot=0)[1:])


def test_runs_pool_into_the_mean_accuracy():
    state, base = subset_example(1)
    other = base.copy()  # a second run that keeps every clip
    r, lo, hi = retained_interval(np.stack([state, other]), base)
    assert r == pytest.approx(0.95, abs=1e-12) and lo < r < hi


def test_predictions_frame_round_trip_and_state_selection():
    labels = np.array([0, 1, 2, 1])
    frames = [predictions_frame(np.array(p), labels, seed=(s, "Int32"), n_removed=(n, "int16"))
              for s, n, p in ((0, 1, [0, 1, 0, 0]), (1, 1, [0, 0, 2, 1]),
                              (None, 0, [0, 1, 2, 1]))]  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    assert str(df["clip"].dtype) == "int32" and str(df.predicted.dtype) == "int16"
    assert str(df.seed.dtype) == "Int32" and df.seed.isna().sum() == 4
    assert list(correct_of(df, seed=None, n_removed=0)) == [1, 1, 1, 1]
    assert list(correct_of(df, seed=1, n_removed=1)) == [1, 0, 1, 1]
    both = correct_of(df[df.seed.notna()], n_removed=1)  # (runs, clips)
    assert both.shape == (2, 4) and both.mean() == pytest.approx(5 / 8)
    with pytest.raises(ValueError):
        predictions_frame(np.zeros(3), labels)


# ----------------------------------------------------------------------------------------
# a point estimate that meets the threshold, an interval that does not
# ----------------------------------------------------------------------------------------
def borderline() -> tuple[np.ndarray, np.ndarray]:
    """The base right on 80 of 100 clips, the state on 76 of those: retained exactly 0.95."""
    base = np.r_[np.ones(80), np.zeros(20)].astype(bool)
    state = np.r_[np.ones(76), np.zeros(24)].astype(bool)
    return state, base


def test_the_point_estimate_meets_95_percent_but_not_with_confidence():
    state, base = borderline()
    r, lo, hi = retained_interval(state, base)
    assert r == pytest.approx(0.95, abs=1e-12) and r >= 0.95 - 1e-12
    assert lo < 0.95 < hi
    assert meets_with_confidence(lo, 0.95) is False and meets_with_confidence(1.0, 0.95) is True
    assert list(meets_with_confidence(np.array([lo, np.nan, 0.96]), 0.95)) == [False, False, True]


def pruning_curve(state: np.ndarray, base: np.ndarray) -> pd.DataFrame:
    """A forward curve of 4 layers: n = 1 keeps every clip, n = 2 is the borderline state
    (retained 0.95, point meets, interval does not), n = 3 keeps nothing."""
    states = [base, base, state, np.zeros_like(base)]
    cis = retained_intervals(states, base)
    rows = []
    for n, (r, lo, hi) in enumerate(cis):
        rows.append({"model": "m", "strategy": "forward", "seed": None, "n_removed": n,
                     "n_layers": 4, "removed": list(range(n)), "accuracy": 0.8 * r,
                     "relative_accuracy": 0.95 if n == 2 else r, "retained_lo": lo,
                     "retained_hi": hi, "total_params": 100 - 10 * n, "latency_ms": 4.0 - n,
                     "eval_clips": len(base), "ci_lo": 0.7, "ci_hi": 0.9})  # fmt: skip
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def test_pruning_summary_counts_layers_removable_both_ways():
    from workflow_scripts.pruning.report import summary_table

    curve = pruning_curve(*borderline())
    s = summary_table(curve, 0.95).iloc[0]
    assert s.max_removed_prefix == 2 and s.max_removed == 2
    assert s.max_removed_prefix_ci == 1 and s.max_removed_ci == 1
    assert s.retained_lo_at_prefix < 0.95 <= s.relative_accuracy_at_prefix
    # cells without the interval: no confident count
    old = summary_table(curve.drop(columns=["retained_lo", "retained_hi"]), 0.95).iloc[0]
    assert old.max_removed_prefix == 2 and pd.isna(old.max_removed_prefix_ci)


def test_mimic_and_structured_summaries_give_both_verdicts():
    from workflow_scripts.mimic.report import summary_table as mimic_summary
    from workflow_scripts.structured.report import summary_table as structured_summary

    r, lo, hi = retained_interval(*borderline())
    mimic = pd.DataFrame([{"model": "m", "kind": "linear", "depth": 1, "target_layers": [4],
                           "accuracy": 0.76, "backbone_accuracy": 0.8, "retained_lo": lo,
                           "retained_hi": hi, "batch_size": 4, "stack_params": 1000,
                           "mimicker_params": 100, "model_params": 2000,
                           "mimicked_model_params": 1100, "stack_ms": 10.0,
                           "mimicker_ms": 2.0, "model_ms": 20.0,
                           "mimicked_model_ms": 12.0}])  # fmt: skip
    m = mimic_summary(mimic, 0.95).iloc[0]
    assert bool(m.meets_threshold) and not bool(m.meets_with_confidence)
    assert m.retained_lo_pct == pytest.approx(100 * lo) and m.retained_hi_pct > 95
    st = pd.DataFrame({"model": ["m", "m"], "target_sparsity": [0.3, 0.6],
                       "retained": [r, 0.5], "retained_lo": [lo, 0.4],
                       "retained_hi": [hi, 0.6]})  # fmt: skip
    s = structured_summary(st, 0.95)
    assert list(s.meets_threshold) == [True, False]
    assert list(s.meets_with_confidence) == [False, False]
    assert list(structured_summary(st, 0.4).meets_with_confidence) == [True, True]


def test_overview_shows_the_point_and_the_confident_count():
    from workflow_scripts.report.overview import REMOVABLE, REMOVABLE_CI, overview_table

    curve = pruning_curve(*borderline())
    baseline = pd.DataFrame([{"model": "m", "split": "testing", "accuracy": 0.8, "ci_lo": 0.7,
                              "ci_hi": 0.9, "n": 100, "num_layers": 4}])  # fmt: skip
    ov = overview_table(baseline, pruning=curve, threshold=0.95)
    point = ov[ov.finding == REMOVABLE].iloc[0]
    conf = ov[ov.finding == REMOVABLE_CI].iloc[0]
    assert point.result.startswith("2 of 4 layers") and point.meets_threshold is True
    assert point.meets_with_confidence is False and point.retained_ci_pct != ""
    assert conf.result.startswith("1 of 4 layers") and conf.meets_with_confidence is True
    assert conf.retained_pct == pytest.approx(100.0) and conf.retained_ci_pct == "100.0-100.0"
    assert conf.also == "2 on the point estimate"


def test_pareto_picks_both_ways_and_names_the_headline():
    """The borderline curve as Pareto points: the smallest frontier point meeting 95% on the
    point estimate removes 2 layers (the overview's headline), with confidence 1; the table
    marks both picks, the overview gives both rows and the README both lines."""
    from workflow_scripts.report import readme
    from workflow_scripts.report.overview import PARETO, PARETO_CI, overview_table
    from workflow_scripts.report.pareto import HEADLINE_USES, pareto_table, smallest_meeting

    curve = pruning_curve(*borderline())
    t = pareto_table(pruning=curve, threshold=0.95)
    head, conf = t[t.headline], t[t.headline_with_confidence]
    assert head.setting.tolist() == ["2 of 4 layers removed"]
    assert bool(head.meets_threshold.iloc[0]) and not bool(head.meets_with_confidence.iloc[0])
    assert conf.setting.tolist() == ["1 of 4 layers removed"]
    assert bool(conf.meets_with_confidence.iloc[0])
    assert smallest_meeting(t).setting.tolist() == head.setting.tolist()
    assert smallest_meeting(t, confident=True).setting.tolist() == conf.setting.tolist()
    assert "point estimate" in HEADLINE_USES and HEADLINE_USES.startswith("meets_threshold")
    baseline = pd.DataFrame([{"model": "m", "split": "testing", "accuracy": 0.8, "ci_lo": 0.7,
                              "ci_hi": 0.9, "n": 100, "num_layers": 4}])  # fmt: skip
    ov = overview_table(baseline, pruning=curve, pareto=t, threshold=0.95)
    point, sure = ov[ov.finding == PARETO].iloc[0], ov[ov.finding == PARETO_CI].iloc[0]
    assert "(2 of 4 layers removed)" in point.method and point.meets_threshold is True
    assert not point.meets_with_confidence
    assert "(1 of 4 layers removed)" in sure.method and bool(sure.meets_with_confidence)
    table = readme.findings_table(ov)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert "2 of 4 layers removed" in lines[PARETO]
    [ci_line] = [v for k, v in lines.items() if k.startswith("the same with confidence (Pareto")]
    assert "1 of 4 layers removed" in ci_line
    # without intervals (older tables) there is no confident row, not a wrong one
    old = pareto_table(pruning=curve.drop(columns=["retained_lo", "retained_hi"]))
    assert not old.headline_with_confidence.any() and old.headline.sum() == 1
    ov = overview_table(baseline, pareto=old, threshold=0.95)
    assert PARETO_CI not in set(ov.finding) and PARETO in set(ov.finding)


def test_export_names_its_decision_and_the_confident_count(tmp_path):
    """The exported headline (point estimate: n = 2) says so in export.json, with both
    verdicts at it and the count its curve keeps with confidence (n = 1, layer 1)."""
    import json

    import torch
    from transformers import AutoModelForAudioClassification

    from workflow_scripts.backbones.registry import small_config
    from workflow_scripts.pruning.export import DECISION, export_headline, headline_entries
    from workflow_scripts.pruning.report import headline_rows

    curve = pruning_curve(*borderline())
    curve["meets_threshold"] = (curve.relative_accuracy >= 0.95) | (curve.n_removed == 0)
    curve["meets_with_confidence"] = meets_with_confidence(curve.retained_lo, 0.95)
    curve["headline"] = headline_rows(curve, 0.95)
    [e] = headline_entries(curve)
    assert e["n_removed"] == 2 and e["meets_threshold"] is True
    assert e["meets_with_confidence"] is False and e["retained_lo"] < 0.95
    assert e["n_removed_with_confidence"] == 1 and e["removed_layers_with_confidence"] == [1]
    cfg = small_config("hubert", {"layers": 4, "hidden": 16, "heads": 2, "ffn": 32,
                                  "conv_dim": [8, 16, 16], "classifier_proj": 8})  # fmt: skip
    cfg.num_labels = 3
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(cfg).eval()
    export_headline(model, curve, tmp_path)
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["decision"] == DECISION and "point estimate" in DECISION
    assert "n_removed_with_confidence" in info["with_confidence"]
    [ck] = info["checkpoints"]
    assert ck["removed_layers"] == [1, 2] and ck["n_removed_with_confidence"] == 1
    assert (ck["meets_threshold"], ck["meets_with_confidence"]) == (True, False)
    # a cell without the verdict columns: no confident count
    [old] = headline_entries(curve.drop(columns=["meets_threshold", "meets_with_confidence"]))
    assert old["n_removed_with_confidence"] is None and "meets_threshold" not in old


# ----------------------------------------------------------------------------------------
# predictions of the evaluated states recompute the cells
# ----------------------------------------------------------------------------------------
def test_pruning_cell_predictions_recompute_its_accuracies_and_intervals():
    """Every row of a random cell (2 seeds, healing at n = 1) from its predictions: the
    accuracy exactly, the retained interval (mean rows pooled over the seeds)."""
    from test_pruning_cells import L, tiny_cell, tiny_model

    from workflow_scripts.pruning import plan, run

    rng = np.random.default_rng(0)
    audio = rng.normal(size=(12, 4000)).astype(np.float32)
    labels = np.arange(12) % 3
    heal = {**plan.HEAL_DEFAULTS, "n": [1], "steps": 2, "batch_size": 4}
    cell = tiny_cell("random", {"seeds": [0, 1]}, heal)
    df, pred = run.cell_rows(tiny_model(), cell, audio, labels, "cpu",
                             train_data=lambda: (audio, labels))  # fmt: skip
    assert list(pred.columns) == ["seed", "n_removed", "healed", "clip", "predicted", "label"]
    assert len(pred) == 12 * (2 * L + 2)  # every set of both seeds, and the 2 healed sets
    assert (pred.label.to_numpy() == np.tile(labels, 2 * L + 2)).all()
    base = correct_of(pred, seed=0, n_removed=0, healed=False)
    for r in df.itertuples(index=False):
        if pd.isna(r.seed):
            ok = correct_of(pred[pred.seed.notna()], n_removed=r.n_removed, healed=False)
        else:
            ok = correct_of(pred, seed=r.seed, n_removed=r.n_removed, healed=False)
        assert ok.mean() == r.accuracy  # exactly
        _, lo, hi = retained_interval(ok, base)
        assert (lo, hi) == (r.retained_lo, r.retained_hi)
        assert r.meets_threshold == (r.relative_accuracy >= 0.95 or r.n_removed == 0)
        assert r.meets_with_confidence == (lo >= 0.95)
    n0 = df[df.n_removed == 0]
    assert (n0.retained_lo == 1.0).all() and (n0.retained_hi == 1.0).all()
    for r in df[df.healed & df.seed.notna()].itertuples(index=False):
        ok = correct_of(pred, seed=r.seed, n_removed=r.n_removed, healed=True)
        assert ok.mean() == r.healed_accuracy
        assert retained_interval(ok, base)[1] == r.healed_retained_lo


def test_structured_cell_predictions_recompute_its_accuracies(tmp_path):
    """The unpruned, pruned and fine-tuned states' predictions give the cell's accuracies
    exactly and its retained intervals."""
    from test_structured import tiny_prune_setup

    from workflow_scripts.structured.run import array_batches, prune_cell

    model, x0, teacher, audio, labels, cell = tiny_prune_setup(steps=4)
    row, _, pred = prune_cell(model, cell, x0, teacher, array_batches(audio, labels, 4), "cpu",
                              train_data=lambda: (audio, labels))  # fmt: skip
    assert list(pred.columns) == ["state", "clip", "predicted", "label"]
    assert list(dict.fromkeys(pred.state)) == ["unpruned", "pruned", "finetuned"]
    ok = {k: correct_of(pred, state=k) for k in ("unpruned", "pruned", "finetuned")}
    assert ok["unpruned"].mean() == row["base_accuracy"] and ok["pruned"].mean() == row["accuracy"]
    assert ok["finetuned"].mean() == row["finetuned_accuracy"]
    _, lo, hi = retained_interval(ok["pruned"], ok["unpruned"])
    assert (lo, hi) == (row["retained_lo"], row["retained_hi"])
    _, lo, hi = retained_interval(ok["finetuned"], ok["unpruned"])
    assert (lo, hi) == (row["finetuned_retained_lo"], row["finetuned_retained_hi"])


def test_mimic_cell_predictions_recompute_its_accuracy(tmp_path_factory):
    """The mimic cell's predictions give its accuracy exactly, and its retained interval
    pairs them with the baseline's predictions (the world's)."""
    from mimic_tiny import MODEL, build_world, tiny_config

    from workflow_scripts.mimic import plan
    from workflow_scripts.mimic import run as mimic_run

    world = build_world(tmp_path_factory.mktemp("world"))
    cfg = tiny_config()
    sl = plan.cell_slice(cfg, MODEL, "no_mimic", "0")
    inputs = {k: world[k] for k in plan.cell_inputs(cfg, model=MODEL, kind="no_mimic", depth=0)}
    assert "baseline_predictions" in inputs
    cell, _, pred = mimic_run.run_cell(inputs, sl, world["root"], "cpu", lambda *_: None)
    r = cell.iloc[0]
    assert list(pred.columns) == ["clip", "predicted", "label"] and len(pred) == r.eval_clips
    ok = (pred.predicted == pred.label).to_numpy()
    assert ok.mean() == r.accuracy
    base = pd.read_parquet(world["baseline_predictions"])
    base_ok = (base.predicted == base.label).to_numpy()
    assert base_ok.mean() == r.backbone_accuracy
    _, lo, hi = retained_interval(ok, base_ok)
    assert (lo, hi) == (r.retained_lo, r.retained_hi)
