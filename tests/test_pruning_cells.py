"""The pruning grid (workflow_scripts.pruning: plan, strategies, run, report): targets,
per-cell config slices, the config check, scores from a cache, one cell on a tiny model (in
memory and from its input files, including a toy strategy added to the registry), the
summary's headline numbers."""

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
from workflow_scripts.core.provenance import canonical_json
from workflow_scripts.core.tables import markdown_table
from workflow_scripts.pruning import plan, report, run
from workflow_scripts.pruning import strategies as registry

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


def config(**pruning_cfg) -> dict:
    """The default config.yaml with a pruning section, validated (defaults filled) by the
    schema and the stage's check (as ``workflow_scripts.grid.validate`` does)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["outputs"] = list(dict.fromkeys([*cfg["outputs"], "pruning"]))
    cfg["pruning"] = pruning_cfg
    validate_config(cfg)
    problems = plan.config_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg


def slice_json(cfg: dict, strategy: str) -> str:
    """The canonical JSON of a cell's slice (what the rule hashes)."""
    return canonical_json(plan.cell_slice(cfg, strategy=strategy, model="m"))


STRATS = {"forward": {}, "block_influence": {"variant": "sequence"}, "random": {"seeds": [0, 1]}}


# ----------------------------------------------------------------------------------------
# Targets, slices, schema
# ----------------------------------------------------------------------------------------
def test_plan_and_report_import_no_torch():
    code = (
        "import sys, workflow_scripts.pruning.plan, workflow_scripts.pruning.report; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr  # the report env has no torch


def test_targets_are_exactly_models_times_strategies_plus_tables():
    cfg = config(strategies=STRATS)
    got = plan.targets(cfg, "R")
    cells = {f"R/cells/pruning/{m}/{s}.parquet" for m in cfg["models"] for s in STRATS}
    tables = {"R/tables/pruning.parquet", "R/tables/pruning_summary.csv",
              "R/tables/pruning_summary.md", "R/charts/pruning_accuracy.html",
              "R/charts/pruning_accuracy.png", "R/charts/pruning_latency.html",
              "R/charts/pruning_latency.png"}  # fmt: skip
    assert len(got) == len(set(got)) == len(cells) + len(tables)
    assert len(cells) == len(cfg["models"]) * len(STRATS) and len(cfg["models"]) >= 2
    assert set(got) == cells | tables
    # grid order: models outer, strategies in registry order
    wanted = [{"model": m, "strategy": s} for m in cfg["models"]
              for s in ("forward", "block_influence", "random")]  # fmt: skip
    assert plan.cells(cfg) == wanted
    assert (
        plan.tables_inputs(cfg, "R")
        == {"cells": plan.cell_paths(cfg, "R")}
        == {"cells": got[: len(cells)]}
    )
    pattern = plan.wildcard_constraints(cfg)["strategy"]
    assert re.fullmatch(pattern, "random")
    assert not re.fullmatch(pattern, "backward")
    assert plan.tables_slice(cfg) == {"threshold": 0.95}


def test_cell_slice_holds_only_its_strategy():
    base = config(strategies=copy.deepcopy(STRATS))
    fwd, bi = (plan.cell_slice(base, strategy=s, model="m") for s in ("forward", "block_influence"))
    assert fwd["strategy"] == "forward" and bi["settings"] == {"variant": "sequence"}
    assert "models" not in json.dumps(fwd) and "seeds" not in json.dumps(fwd)

    other = config(strategies={**copy.deepcopy(STRATS), "random": {"seeds": [5, 6, 7]}},
                   calibration_clips=64)  # fmt: skip
    assert slice_json(other, "forward") == slice_json(base, "forward")
    assert slice_json(other, "block_influence") != slice_json(
        base, "block_influence"
    )  # calibration size enters only the cache-scored strategies
    assert plan.cell_slice(other, strategy="random", model="m")["settings"]["seeds"] == [5, 6, 7]

    # healing settings enter only when healing is on, and a strategy's own heal overrides
    quiet = config(strategies=copy.deepcopy(STRATS), heal={"steps": 7})
    assert slice_json(quiet, "forward") == slice_json(base, "forward")
    strats = copy.deepcopy(STRATS)
    strats["forward"] = {"heal": {"n": [3, 1], "lr": 0.01}}
    on = config(strategies=strats, heal={"steps": 7})
    heal = plan.cell_slice(on, strategy="forward", model="m")["heal"]
    assert heal == {**plan.HEAL_DEFAULTS, "n": [1, 3], "steps": 7, "lr": 0.01}
    assert plan.cell_slice(on, strategy="random", model="m")["heal"] is None
    assert slice_json(on, "random") == slice_json(base, "random")


def test_cell_inputs_need_the_cache_only_for_scored_strategies():
    cfg = config(strategies=copy.deepcopy(STRATS))
    scored = plan.cell_inputs(cfg, "R", model="m", strategy="knn_block_influence")
    assert scored == {"model": "R/finetuned/m", "manifest": "R/data/manifest.parquet",
                      "cache": "R/cache/m/validation.safetensors"}  # fmt: skip
    assert set(plan.cell_inputs(cfg, "R", model="m", strategy="forward")) == {"model", "manifest"}


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"strategies": {"prune_randomly": {}}},
         "config.pruning.strategies: unknown key(s) ['prune_randomly']; allowed keys: "
         "['angular_block', "),
        ({"strategies": {"random": {"seed": 1}}},
         "config.pruning.strategies.random: unknown key(s) ['seed']"),
        ({"strategies": {"forward": {"heal": {"n": [0]}}}},
         "config.pruning.strategies.forward.heal.n[0]: 0 is less than the minimum"),
        ({"latency": {"repeats": 0}}, "config.pruning.latency.repeats: 0 is less than"),
        ({"strategies": {}}, "config.pruning.strategies: {} should be non-empty"),
        ({"strategies": {"angular_block": {"reduce": "median"}}},
         "config.pruning.strategies.angular_block.reduce: 'median' is not one of the allowed"),
        ({"strategies": {"random": {"seeds": [1, 1]}}},
         "config.pruning.strategies.random.seeds: [1, 1] has non-unique elements"),
        ({"strategies": {"forward": {"keep_first": "yes"}}},
         "config.pruning.strategies.forward.keep_first: 'yes' is not of type"),
    ],
)  # fmt: skip
def test_schema_names_the_bad_key(section, expected):
    with pytest.raises(ConfigError) as err:
        config(**section)
    assert expected in str(err.value)


def test_config_problems_name_an_unknown_strategy():
    cfg = {"pruning": {"strategies": {"forward": {}, "foo": {}, "random": {"seed": 1}}}}
    assert plan.config_problems(cfg) == [
        f"config.pruning.strategies: unknown key(s) ['foo']; allowed keys: "
        f"{sorted(registry.STRATEGIES)}",
        "config.pruning.strategies.random: unknown key(s) ['seed']; allowed keys: ['heal', "
        "'keep_first', 'seeds']",
    ]
    fine = {"pruning": {"strategies": {"forward": {"keep_first": True}}}}
    assert plan.config_problems(fine) == []
    assert plan.config_problems({}) == []


def test_defaults_fill_the_slice():
    """The schema fills the section's defaults, the registry each strategy's settings; the
    test clips are the evaluation set's, the threshold is the headline's (exported)."""
    cfg = config(strategies={"random": {}, "similarity_greedy": {}})
    p = cfg["pruning"]
    assert plan.cell_slice(cfg, strategy="random")["settings"]["seeds"] == [0, 1, 2]
    assert plan.cell_slice(cfg, strategy="similarity_greedy")["settings"]["clips"] >= 2
    assert p["threshold"] == 0.95 and p["latency"]["enabled"] is True and p["heal"] == {}
    sl = plan.cell_slice(cfg, strategy="random")
    assert sl["test_clips"] == cfg["evaluation"]["test_clips"] == 512
    assert sl["threshold"] == 0.95
    with pytest.raises(ConfigError, match="config.pruning: unknown key"):
        config(strategies={"forward": {}}, test_clips=256)  # now evaluation.test_clips


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
    s = registry.scores_from_cache("block_influence", H, {"variant": "sequence"})
    assert s.shape == (5,) and list(np.argsort(s)) == [3, 1, 4, 2, 0]
    tok = registry.scores_from_cache("block_influence", H, {"variant": "per_token"})
    assert list(np.argsort(tok)) == [3, 1, 4, 2, 0]
    [(seed, sets)] = registry.removal_plans("block_influence", 5, {}, scores=s)
    assert seed is None and sets == [[], [3], [1, 3], [1, 3, 4], [1, 2, 3, 4]]
    D = registry.scores_from_cache("angular_block", H, {"reduce": "all"})
    assert D.shape == (6, 6)
    [(_, ang)] = registry.removal_plans("angular_block", 5, {}, scores=D)
    assert ang[1] == [3] and all(len(a) == n for n, a in enumerate(ang))
    with pytest.raises(ValueError, match="no scores"):
        registry.scores_from_cache("forward", H, {})


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
            "batch_size": 4, "heal": heal, "threshold": 0.95,
            "latency": {"enabled": True, "batch_size": 2, "warmup": 0, "repeats": 2}}  # fmt: skip


def test_random_cell_rows_per_seed_plus_mean_and_healing():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(9, 4000)).astype(np.float32)
    labels = np.arange(9) % 3
    heal = {**plan.HEAL_DEFAULTS, "n": [1, 9], "steps": 2, "batch_size": 4}
    calls = []

    def train_data():
        calls.append(1)
        return audio, labels

    df, _ = run.cell_rows(tiny_model(), tiny_cell("random", {"seeds": [0, 1]}, heal),
                          audio, labels, "cpu", train_data=train_data)  # fmt: skip
    assert len(df) == 3 * L and calls == [1]  # 2 seeds x L rows + L mean rows, data loaded once
    per_seed = df[df.seed.notna()]
    for seed in (0, 1):
        g = per_seed[per_seed.seed == seed].sort_values("n_removed")
        expect = registry.removal_sets("random", L, seed=seed)
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
    df, _ = run.cell_rows(tiny_model(), cell, audio, np.arange(5) % 3, scores=scores)
    assert [list(r) for r in df.removed] == [[], [1], [1, 3], [0, 1, 3]]
    assert df.latency_ms.isna().all() and df.seed.isna().all()
    assert json.loads(df.scores.iloc[0]) == pytest.approx(scores.tolist())


# ----------------------------------------------------------------------------------------
# One cell from its input files; a toy strategy through the registry
# ----------------------------------------------------------------------------------------
WORDS = ["backward", "bed", "bird"]  # label_idx 0..2 = the tiny model's classes


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A cell's inputs on disk: the tiny model's folder, a 3-word Speech Commands layout
    (4 validation, 5 test, 3 training clips per word), its manifest and a validation cache."""
    import soundfile as sf

    from workflow_scripts.backbones.cachefile import write_cache
    from workflow_scripts.data.loader import build_manifest

    d = tmp_path_factory.mktemp("pruning_cell")
    root, rng, lists = d / "corpus", np.random.default_rng(5), {"val": [], "test": []}
    for w in WORDS:
        (root / w).mkdir(parents=True)
        for k in range(12):
            rel = f"{w}/s{k:02d}_nohash_0.wav"
            sf.write(root / rel, 0.1 * rng.normal(size=16000), 16000, subtype="FLOAT")
            if k < 9:
                lists["val" if k < 4 else "test"].append(rel)
    (root / "validation_list.txt").write_text("\n".join(lists["val"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    build_manifest(root, words=WORDS, progress=False)[0].to_parquet(d / "manifest.parquet")
    tiny_model().save_pretrained(d / "model", safe_serialization=True)
    H = planted_stack([0.9, 0.05, 0.4, 0.01], n=8, t=49, d=32)  # block 3 least, then 1, 2, 0
    write_cache(d / "cache.safetensors", {"hidden_states": H}, np.zeros(8), ["p"] * 8)
    return {"model_dir": str(d / "model"), "manifest": str(d / "manifest.parquet"),
            "root": str(root), "cache": str(d / "cache.safetensors")}  # fmt: skip


def file_cell(cfg: dict, strategy: str, files: dict) -> pd.DataFrame:
    """``run.run_cell`` on the files its plan inputs name (the cache only when it is one)."""
    cell = plan.cell_slice(cfg, strategy=strategy, model="tiny")
    inputs = plan.cell_inputs(cfg, "R", model="tiny", strategy=strategy)
    cache = files["cache"] if "cache" in inputs else None
    return run.run_cell(cell, model="tiny", model_dir=files["model_dir"],
                        manifest=files["manifest"], root=files["root"], cache=cache,
                        device="cpu")[0]  # fmt: skip


@pytest.fixture
def toy_strategy():
    """``odd_first``: odd blocks first, then even ones; needs nothing, one setting."""

    def odd_first(L, keep_first, *, scores=None, evaluator=None, seed=0):
        order = [i for i in range(L) if i % 2] + [i for i in range(L) if not i % 2]
        return [sorted(order[:n]) for n in range(L)]

    registry.register("odd_first", function=odd_first, defaults={"note": "toy"},
                      schema={"note": {"type": "string"}})  # fmt: skip
    yield "odd_first"
    registry.unregister("odd_first")


def test_toy_strategy_runs_through_run_cell(tiny_files, toy_strategy):
    cfg = config(strategies={toy_strategy: {}, "backward": {}}, latency={"enabled": False},
                 batch_size=8)  # fmt: skip
    assert plan.cell_slice(cfg, strategy=toy_strategy)["settings"] == {"note": "toy"}
    assert re.fullmatch(plan.wildcard_constraints(cfg)["strategy"], toy_strategy)
    assert plan.config_problems({"pruning": {"strategies": {toy_strategy: {"note": 3}}}}) == [
        "config.pruning.strategies.odd_first.note: 3 is not of type 'string'"
    ]
    df = file_cell(cfg, toy_strategy, tiny_files)
    assert [list(r) for r in df.removed] == [[], [1], [1, 3], [0, 1, 3]]
    assert list(df.model) == ["tiny"] * L and set(df.strategy) == {toy_strategy}
    assert df.calibration_clips.isna().all() and df.seed.isna().all()
    assert (df.n_utterances == 15).all()  # the whole test split
    ref = file_cell(cfg, "backward", tiny_files)
    assert list(df.columns) == list(ref.columns) and df.columns[0] == "model"
    assert list(df.dtypes) == list(ref.dtypes) and df.accuracy[0] == ref.accuracy[0]
    summary = report.summary_table(pd.concat([ref, df], ignore_index=True))
    assert list(summary.strategy) == ["backward", toy_strategy]  # registry order


@pytest.mark.parametrize(
    "strategy, settings, calibration",
    [("block_influence", {}, 5), ("similarity_greedy", {"clips": 3, "batch_size": 2}, 3)],
)
def test_calibrated_cell_from_files(tiny_files, strategy, settings, calibration):
    cfg = config(strategies={strategy: settings}, latency={"enabled": False},
                 calibration_clips=5)  # fmt: skip
    df = file_cell(cfg, strategy, tiny_files)
    assert list(df.calibration_clips) == [calibration] * L
    assert [len(r) for r in df.removed] == list(range(L))
    if strategy == "block_influence":  # the planted order, from the first 5 cached clips
        assert [list(r) for r in df.removed] == [[], [3], [1, 3], [1, 2, 3]]
        assert len(json.loads(df.scores.iloc[0])) == L
    else:
        assert df.scores.isna().all()


def test_cell_streams_test_and_healing_clips_with_in_memory_results(tiny_files, monkeypatch):
    """run_cell reads the test split one evaluation batch at a time and the healing clips
    (``train_clips`` null: the whole split) one healing batch per step, and its rows equal
    those of the cell on the clips held in memory."""
    from workflow_scripts.backbones.registry import load_classifier
    from workflow_scripts.data import loader

    cfg = config(strategies={"random": {"seeds": [0]}}, batch_size=4,
                 latency={"batch_size": 2, "warmup": 0, "repeats": 1},
                 heal={"n": [1], "steps": 2, "batch_size": 3})  # fmt: skip
    cell = plan.cell_slice(cfg, strategy="random", model="tiny")
    assert cell["heal"]["train_clips"] is None
    sizes, read_clips = [], loader.read_clips
    monkeypatch.setattr(loader, "read_clips", lambda root, paths: sizes.append(len(paths))
                        or read_clips(root, paths))  # fmt: skip
    df = file_cell(cfg, "random", tiny_files)
    assert max(sizes) == 4 and sum(sizes) == 15 * 2 + 2 + 2 * 3  # sweep + healed eval, heal
    monkeypatch.setattr(loader, "read_clips", read_clips)
    manifest = pd.read_parquet(tiny_files["manifest"])
    test = loader.load_split(tiny_files["root"], manifest, "testing")
    train = loader.load_split(tiny_files["root"], manifest, "training")
    ref, _ = run.cell_rows(load_classifier(tiny_files["model_dir"]), cell, test[0], test[1],
                           train_data=lambda: train[:2])  # fmt: skip
    timed = ["latency_ms", "latency_min_ms", "base_latency_ms", "base_latency_min_ms",
             "speedup", "speedup_lo", "speedup_hi", "heal_seconds", "latency_threads"]  # fmt: skip
    got = df.drop(columns=["model", "calibration_clips", *timed])
    pd.testing.assert_frame_equal(got, ref.drop(columns=timed), check_exact=True)
    assert df.healed.sum() == 2 and (df.n_utterances == 15).all()  # seed 0 and mean rows


def test_provenance_seed():
    heal = {**plan.HEAL_DEFAULTS, "n": [1], "seed": 7}
    assert run.provenance_seed(tiny_cell("random", {"seeds": [0, 1]}, heal)) == "0,1"
    assert run.provenance_seed(tiny_cell("forward", {}, heal)) == 7
    assert run.provenance_seed(tiny_cell("forward", {})) is None


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
    s = report.summary_table(df, 0.95)
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
    exact = report.summary_table(curve("j", "forward", [1.0, 0.95, 0.5]), 0.95)
    assert exact.max_removed.item() == 1  # exactly 95% counts as kept
    assert report.summary_table(df, 0.5).set_index("strategy").max_removed["forward"] == 3
    md = markdown_table(s)
    assert md.count("\n") == len(s) + 2 and "| m | forward |" in md


def test_headline_rows_and_interleaved_speedups_in_the_summary():
    """The cell's ``headline`` marks each curve's prefix headline (a dip stops it; the mean
    over seeds is a curve of its own); the summary takes the cells' own speed-ups."""
    df = pd.concat([
        curve("m", "forward", [0.8, 0.79, 0.70, 0.77, 0.2]),  # dip at n = 2: headline n = 1
        curve("m", "random", [0.8, 0.8, 0.5, 0.8, 0.2], seed=0),
        curve("m", "random", [0.8, 0.8, 0.8, 0.5, 0.2]),  # mean row (seed null)
    ], ignore_index=True)  # fmt: skip
    df["speedup"] = [1.0, 1.5, 2.0, 2.5, 3.0] * 3
    df["base_latency_ms"] = [10.0, 11.0, 9.0, 10.5, 30.0] * 3
    heads = df[report.headline_rows(df, 0.95)]
    assert list(zip(heads.strategy, heads.seed.astype(object), heads.n_removed, strict=True)) == [
        ("forward", None, 1), ("random", 0, 1), ("random", None, 2)]  # fmt: skip
    s = report.summary_table(df, 0.95).set_index("strategy")
    fwd = s.loc["forward"]
    assert fwd.max_removed_prefix == 1 and fwd.speedup_at_prefix == 1.5
    assert fwd.accuracy_at_prefix == 0.79 and fwd.speedup_at_max == 2.5  # max_removed = 3
    assert fwd.base_latency_ms == 10.5  # the median of the rows' interleaved baselines


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
    assert [r["threshold_accuracy_pct"] for r in rows if r["kind"] == "threshold"] == [
        pytest.approx(76.0)
    ]  # in percent, as every chart
    assert charts.pruning_latency_chart(df).to_dict()["facet"]["column"]["field"] == "model"
