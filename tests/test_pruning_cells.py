"""The pruning grid's helpers (workflow_scripts.pruning.cells): targets, per-cell config slices,
scores from a cache, one cell on a tiny model, the summary's headline numbers, the schema."""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_scripts.backbones.registry import small_config
from workflow_scripts.core.config import ConfigError, validate_config
from workflow_scripts.pruning import cells as pruning_cells
from workflow_scripts.pruning import core as pruning

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


def config(**pruning_cfg) -> dict:
    """The default config.yaml with a pruning section, validated (defaults filled)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["outputs"] = list(dict.fromkeys([*cfg["outputs"], "pruning"]))
    cfg["pruning"] = pruning_cfg
    return validate_config(cfg)


STRATS = {"forward": {}, "block_influence": {"variant": "sequence"}, "random": {"seeds": [0, 1]}}


# ----------------------------------------------------------------------------------------
# Targets, slices, schema
# ----------------------------------------------------------------------------------------
def test_strategies_are_the_librarys_and_module_imports_no_torch():
    assert pruning_cells.STRATEGIES == pruning.STRATEGIES
    code = "import sys, workflow_scripts.pruning.cells; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr  # the report env has no torch


def test_targets_are_exactly_models_times_strategies_plus_tables():
    cfg = config(strategies=STRATS)
    got = pruning_cells.targets(cfg, "R")
    cells = {f"R/cells/pruning/{m}/{s}.parquet" for m in cfg["models"] for s in STRATS}
    tables = {"R/tables/pruning.parquet", "R/tables/pruning_summary.csv",
              "R/tables/pruning_summary.md", "R/charts/pruning_accuracy.html",
              "R/charts/pruning_accuracy.png", "R/charts/pruning_latency.html",
              "R/charts/pruning_latency.png"}  # fmt: skip
    assert len(got) == len(set(got)) == len(cells) + len(tables) == 3 * 3 + 7
    assert set(got) == cells | tables
    assert re.fullmatch(pruning_cells.strategy_pattern(cfg), "random")
    assert not re.fullmatch(pruning_cells.strategy_pattern(cfg), "backward")


def test_rule_outputs_match_targets():
    """rules/pruning.smk spells the aggregation outputs out; they must be what targets() asks."""
    text = (ROOT / "rules/pruning.smk").read_text()
    in_rule = set(re.findall(r'f"\{RESULTS\}/((?:tables|charts)/pruning[^"]*)"', text))
    listed = {p.removeprefix("R/") for p in pruning_cells.table_outputs("R").values()}
    assert in_rule == listed


def test_cell_slice_holds_only_its_strategy():
    base = config(strategies=copy.deepcopy(STRATS))
    fwd, bi = (pruning_cells.cell_params(base, s) for s in ("forward", "block_influence"))
    assert fwd["strategy"] == "forward" and bi["settings"] == {"variant": "sequence"}
    assert "models" not in json.dumps(fwd) and "seeds" not in json.dumps(fwd)

    other = config(strategies={**copy.deepcopy(STRATS), "random": {"seeds": [5, 6, 7]}},
                   calibration_clips=64)  # fmt: skip
    assert pruning_cells.cell_json(other, "forward") == pruning_cells.cell_json(base, "forward")
    assert pruning_cells.cell_json(other, "block_influence") != pruning_cells.cell_json(
        base, "block_influence"
    )  # calibration size enters only the cache-scored strategies
    assert pruning_cells.cell_params(other, "random")["settings"]["seeds"] == [5, 6, 7]

    # healing settings enter only when healing is on, and a strategy's own heal overrides
    quiet = config(strategies=copy.deepcopy(STRATS), heal={"steps": 7})
    assert pruning_cells.cell_json(quiet, "forward") == pruning_cells.cell_json(base, "forward")
    strats = copy.deepcopy(STRATS)
    strats["forward"] = {"heal": {"n": [3, 1], "lr": 0.01}}
    on = config(strategies=strats, heal={"steps": 7})
    heal = pruning_cells.cell_params(on, "forward")["heal"]
    assert heal == {**pruning_cells.HEAL_DEFAULTS, "n": [1, 3], "steps": 7, "lr": 0.01}
    assert pruning_cells.cell_params(on, "random")["heal"] is None
    assert pruning_cells.cell_json(on, "random") == pruning_cells.cell_json(base, "random")


def test_cell_inputs_need_the_cache_only_for_scored_strategies():
    assert "cache" in pruning_cells.cell_inputs("R", "m", "knn_block_influence")
    assert set(pruning_cells.cell_inputs("R", "m", "forward")) == {"model", "manifest"}


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"strategies": {"prune_randomly": {}}},
         "config.pruning.strategies: unknown key(s) ['prune_randomly']; allowed keys: ['angular"),
        ({"strategies": {"random": {"seed": 1}}},
         "config.pruning.strategies.random: unknown key(s) ['seed']"),
        ({"strategies": {"forward": {"heal": {"n": [0]}}}},
         "config.pruning.strategies.forward.heal.n[0]: 0 is less than the minimum"),
        ({"latency": {"repeats": 0}}, "config.pruning.latency.repeats: 0 is less than"),
        ({"strategies": {}}, "config.pruning.strategies: {} should be non-empty"),
    ],
)  # fmt: skip
def test_schema_names_the_bad_key(section, expected):
    with pytest.raises(ConfigError) as err:
        config(**section)
    assert expected in str(err.value)


def test_schema_fills_defaults():
    cfg = config(strategies={"random": {}, "similarity_greedy": {}})
    p = cfg["pruning"]
    assert p["strategies"]["random"]["seeds"] == [0, 1, 2]
    assert p["strategies"]["similarity_greedy"]["clips"] >= 2
    assert p["threshold"] == 0.95 and p["latency"]["enabled"] is True and p["heal"] == {}


# ----------------------------------------------------------------------------------------
# Scores and one cell on a tiny model
# ----------------------------------------------------------------------------------------
def planted_stack(changes, n=6, t=5, d=8, seed=0) -> np.ndarray:
    """(L+1, N, T, D) float16 states where block l changes h_l by ``changes[l]`` x noise."""
    rng = np.random.default_rng(seed)
    h = [rng.normal(size=(n, t, d))]
    for c in changes:
        h.append(h[-1] + c * rng.normal(size=(n, t, d)))
    return np.stack(h).astype(np.float16)


def test_block_influence_scores_from_a_cache_give_the_planted_order():
    changes = [0.9, 0.05, 0.4, 0.01, 0.2]  # block 3 changes least, then 1, 4, 2, 0
    H = planted_stack(changes)
    s = pruning_cells.scores_from_cache("block_influence", H, {"variant": "sequence"})
    assert s.shape == (5,) and list(np.argsort(s)) == [3, 1, 4, 2, 0]
    tok = pruning_cells.scores_from_cache("block_influence", H, {"variant": "per_token"})
    assert list(np.argsort(tok)) == [3, 1, 4, 2, 0]
    [(seed, sets)] = pruning_cells.removal_plans("block_influence", 5, {}, scores=s)
    assert seed is None and sets == [[], [3], [1, 3], [1, 3, 4], [1, 2, 3, 4]]
    D = pruning_cells.scores_from_cache("angular_block", H, {"reduce": "all"})
    assert D.shape == (6, 6)
    [(_, ang)] = pruning_cells.removal_plans("angular_block", 5, {}, scores=D)
    assert ang[1] == [3] and all(len(a) == n for n, a in enumerate(ang))
    with pytest.raises(ValueError, match="no scores"):
        pruning_cells.scores_from_cache("forward", H, {})


L = 4


@functools.cache
def tiny_model():
    from transformers import AutoModelForAudioClassification

    cfg = small_config("hubert", dict(hidden=32, layers=L, heads=2, ffn=64, classifier_proj=16))
    cfg.num_labels = 3
    torch.manual_seed(0)
    return AutoModelForAudioClassification.from_config(cfg).eval()


def tiny_cell(strategy, settings, heal=None):
    return {"strategy": strategy, "settings": settings, "keep_first": None, "test_clips": None,
            "batch_size": 4, "heal": heal,
            "latency": {"enabled": True, "batch_size": 2, "warmup": 0, "repeats": 2}}  # fmt: skip


def test_random_cell_rows_per_seed_plus_mean_and_healing():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(9, 4000)).astype(np.float32)
    labels = np.arange(9) % 3
    heal = {**pruning_cells.HEAL_DEFAULTS, "n": [1, 9], "steps": 2, "batch_size": 4}
    calls = []

    def train_data():
        calls.append(1)
        return audio, labels

    df = pruning_cells.run_cell(tiny_model(), tiny_cell("random", {"seeds": [0, 1]}, heal),
                                audio, labels, "cpu", train_data=train_data)  # fmt: skip
    assert len(df) == 3 * L and calls == [1]  # 2 seeds x L rows + L mean rows, data loaded once
    per_seed = df[df.seed.notna()]
    for seed in (0, 1):
        g = per_seed[per_seed.seed == seed].sort_values("n_removed")
        expect = pruning.removal_sets("random", L, seed=seed)
        assert [list(r) for r in g.removed] == expect
        assert (np.diff(g.total_params) < 0).all() and (g.latency_ms > 0).all()
    assert per_seed.groupby("n_removed").accuracy.nunique()[0] == 1  # n = 0: same model
    mean = df[df.seed.isna()].sort_values("n_removed")
    want = per_seed.groupby("n_removed").accuracy.mean().sort_index()
    assert np.allclose(mean.accuracy, want) and mean.removed.isna().all()
    assert (mean.accuracy_min <= mean.accuracy).all() and mean.ci_lo.isna().all()
    assert np.allclose(df.relative_accuracy, df.accuracy / df.base_accuracy)
    healed = df[df.healed_accuracy.notna()]
    assert set(healed.n_removed) == {1} and len(healed) == 3  # n = 9 >= L is skipped
    assert (df[df.healed].heal_steps == 2).all()


def test_scored_cell_removes_in_score_order():
    rng = np.random.default_rng(1)
    audio = rng.normal(size=(5, 4000)).astype(np.float32)
    scores = np.array([0.3, 0.1, 0.4, 0.2])
    cell = tiny_cell("block_influence", {"variant": "sequence"})
    cell["latency"] = {"enabled": False}
    df = pruning_cells.run_cell(tiny_model(), cell, audio, np.arange(5) % 3, scores=scores)
    assert [list(r) for r in df.removed] == [[], [1], [1, 3], [0, 1, 3]]
    assert df.latency_ms.isna().all() and df.seed.isna().all()
    assert json.loads(df.scores.iloc[0]) == pytest.approx(scores.tolist())


# ----------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------
def curve(model, strategy, acc, seed=None, latency=None):
    L = len(acc)
    return pd.DataFrame({
        "model": model, "strategy": strategy, "seed": seed, "n_removed": range(L),
        "n_layers": L, "removed": [list(range(n)) for n in range(L)], "accuracy": acc,
        "relative_accuracy": np.asarray(acc) / acc[0], "total_params": [100 - 10 * n for n in
                                                                         range(L)],
        "latency_ms": latency if latency is not None else [float(L - n) for n in range(L)],
    })  # fmt: skip


def test_summary_headline_and_auc_on_a_known_curve():
    df = pd.concat([
        curve("m", "forward", [0.8, 0.79, 0.70, 0.77, 0.2]),  # rel: 1 .9875 .875 .9625 .25
        curve("m", "random", [0.8, 0.5, 0.4, 0.3, 0.2], seed=0),
        curve("m", "random", [0.8, 0.8, 0.8, 0.8, 0.8]),  # mean row (seed null)
        curve("k", "backward", [0.5, 0.2, 0.1]),
    ], ignore_index=True)  # fmt: skip
    s = pruning_cells.summary_table(df, 0.95)
    assert list(zip(s.model, s.strategy, s.seed.astype(object), strict=True)) == [
        ("k", "backward", pd.NA), ("m", "forward", pd.NA), ("m", "random", pd.NA),
        ("m", "random", 0)]  # fmt: skip
    fwd = s[s.strategy == "forward"].iloc[0]
    assert fwd.max_removed == 3 and fwd.max_removed_pct == 60.0  # the 0.70 dip does not stop it
    assert fwd.max_removed_prefix == 1
    assert fwd.auc_accuracy == pytest.approx((0.795 + 0.745 + 0.735 + 0.485) / 4)
    assert fwd.auc_relative == pytest.approx(fwd.auc_accuracy / 0.8)
    assert fwd.accuracy_at_max == 0.77 and fwd.removed_at_max == [0, 1, 2]
    assert fwd.total_params_pct_at_max == 70.0 and fwd.speedup_at_max == pytest.approx(5 / 2)
    rnd = s[s.strategy == "random"]
    assert list(rnd.max_removed) == [4, 0] and rnd.auc_relative.iloc[0] == pytest.approx(1.0)
    bwd = s[s.strategy == "backward"].iloc[0]
    assert bwd.max_removed == 0 and bwd.auc_accuracy == pytest.approx((0.35 + 0.15) / 2)
    exact = pruning_cells.summary_table(curve("j", "forward", [1.0, 0.95, 0.5]), 0.95)
    assert exact.max_removed.item() == 1  # exactly 95% counts as kept
    assert pruning_cells.summary_table(df, 0.5).set_index("strategy").max_removed["forward"] == 3
    md = pruning_cells.markdown_table(s)
    assert md.count("\n") == len(s) + 2 and "| m | forward |" in md


def test_charts_build_with_threshold_rule():
    from workflow_scripts.report import charts

    df = pd.concat([curve("m", "forward", [0.8, 0.7, 0.2]),
                    curve("m", "random", [0.8, 0.6, 0.1], seed=1)], ignore_index=True)  # fmt: skip
    df["ci_lo"], df["ci_hi"], df["base_accuracy"] = df.accuracy - 0.1, df.accuracy, 0.8
    df["accuracy_min"] = df["accuracy_max"] = df.accuracy
    df["healed_accuracy"] = [math.nan, 0.75, math.nan] * 2
    spec = charts.pruning_accuracy_chart(df, 0.95).to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert {r["strategy"] for r in rows if r["kind"] == "curve"} == {"forward"}  # seeds dropped
    assert [r["threshold_accuracy"] for r in rows if r["kind"] == "threshold"] == [
        pytest.approx(0.76)
    ]
    assert charts.pruning_latency_chart(df).to_dict()["facet"]["column"]["field"] == "model"
