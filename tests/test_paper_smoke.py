"""The paper's grid at real size (config/paper-smoke.yaml) for one post-LN and one pre-LN
architecture, wav2vec2-base (12 x 768, 12 heads) and wavlm-large (24 x 1024, 16 heads, pre-LN,
relative position bias), as random-weight checkpoints written offline from
config/architectures.yaml and loaded through the same `hf:` path as real ones. Every stage
runs in a copy of the project (`--configfile`, as a user would), and its cells show the real
sizes: 12 / 24 layers and 768 / 1024 wide everywhere, layer-pruning sweeps with one row per
removed block (prefix-resumed over 24 layers), structured shrinking of 16-head blocks, and
finite accuracies after WavLM's block 0 (owner of the relative-position table) is removed.

To fit `make test`, the grid is the paper-smoke grid with fewer cells and clips per model:
one metric (cka_linear, which the depth-2 mimicker's target needs), the backward sweep
(prefix-resumed) and a forward sweep that removes block 0 first (keep_first: false), without
latency timing, the linear depth-2 mimicker and one structured target, one step of each
training, 2 test clips. `make smoke-paper` runs the whole grid on all five architectures.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, project_copy, run_smk

from workflow_scripts.core import paths

# About 4 minutes on 2 cores: opt-in (REAL_SIZE_TESTS=1), which .ci/run sets, so CI runs it on
# every change while `make test` keeps its 10-minute budget here.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("REAL_SIZE_TESTS"),
        reason="real-size encoders through every stage; set REAL_SIZE_TESTS=1 (.ci/run does)",
    ),
]

SMOKE = yaml.safe_load((ROOT / "config/paper-smoke.yaml").read_text())
SIZES = {"wav2vec2-base": (12, 768, 12, False), "wavlm-large": (24, 1024, 16, True)}
SEED, DTYPE = 0, "float16"


def smoke_config(checkpoints: dict[str, Path]) -> dict:
    """paper-smoke.yaml on the two models, with fewer cells and clips (module docstring)."""
    cfg = json.loads(json.dumps(SMOKE))
    cfg["models"] = {m: {"hf": str(checkpoints[m])} for m in SIZES}
    cfg["finetune"].update(steps=1, batch_size=2, eval_clips=2)
    cfg["evaluation"]["test_clips"] = 2
    cfg["cache"].update(clips=4, train_clips=4)
    cfg["similarity"]["metrics"] = {"cka_linear": SMOKE["similarity"]["metrics"]["cka_linear"]}
    cfg["pruning"]["strategies"] = {"backward": {}, "forward": {"keep_first": False}}
    cfg["pruning"]["latency"] = {"enabled": False}  # 2 x 24 timed passes: make smoke-paper's
    cfg["mimic"]["types"] = {"linear": {**SMOKE["mimic"]["types"]["linear"], "depths": [2]}}
    cfg["mimic"]["no_mimic"] = False
    cfg["structured"].update(targets=[0.5], steps=1, train_clips=2)
    return cfg


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The two random checkpoints: those of `make real-models` when current (read only), else
    written here."""
    from workflow_scripts.backbones.architectures import hub_id_of, is_current, random_checkpoint

    out, tmp = {}, None
    for name in SIZES:
        shipped = ROOT / "models/real" / name
        if is_current(shipped, hub_id_of(name), SEED, DTYPE):
            out[name] = shipped
            continue
        tmp = tmp or tmp_path_factory.mktemp("real_models")
        out[name] = random_checkpoint(name, tmp / name, SEED, DTYPE)
    return out


@pytest.fixture(scope="module")
def smoke(checkpoints, tmp_path_factory) -> Path:
    d = project_copy(tmp_path_factory.mktemp("paper_smoke"))
    (d / "config/paper-smoke-test.yaml").write_text(yaml.safe_dump(smoke_config(checkpoints)))
    run_smk(d, "--profile", "profiles/local", "--configfile", "config/paper-smoke-test.yaml",
            timeout=600)  # fmt: skip
    return d / paths.RESULTS


def cell(results: Path, name: str, **wildcards) -> pd.DataFrame:
    return pd.read_parquet(Path(paths.path(name, str(results), **wildcards)))


def test_checkpoints_are_the_architectures(checkpoints):
    from workflow_scripts.core.config import model_config

    for name, (layers, hidden, heads, pre_ln) in SIZES.items():
        cfg = model_config({"hf": str(checkpoints[name])})
        assert (cfg["num_hidden_layers"], cfg["hidden_size"]) == (layers, hidden)
        assert (cfg["num_attention_heads"], cfg["do_stable_layer_norm"]) == (heads, pre_ln)


def test_baseline_and_similarity_at_real_size(smoke):
    for name, (layers, hidden, _, _) in SIZES.items():
        base = cell(smoke, "baseline_cell", model=name)
        assert set(base["num_layers"]) == {layers}
        # the head: projector hidden -> 256, classifier 256 -> 3 words
        assert set(base["params_head"]) == {hidden * 256 + 256 + 256 * 3 + 3}
        sim = cell(smoke, "similarity_cell", model=name, metric="cka_linear")
        assert sim[["layer_i", "layer_j"]].max().max() == layers  # hidden states 0 .. L
        assert sim["value"].notna().all()
        with open(Path(paths.path("finetuned", str(smoke), model=name)) / "config.json") as f:
            assert json.load(f)["hidden_size"] == hidden


def test_layer_pruning_sweeps_every_block(smoke):
    for name, (layers, _, _, _) in SIZES.items():
        for strategy in ("backward", "forward"):
            df = cell(smoke, "pruning_cell", model=name, strategy=strategy)
            assert sorted(df["n_removed"]) == list(range(layers)), (name, strategy)
            assert df["accuracy"].map(math.isfinite).all(), (name, strategy)
    # WavLM: removing block 0 moves its relative-position table to the next kept block
    fwd = cell(smoke, "pruning_cell", model="wavlm-large", strategy="forward")
    first = fwd[fwd["n_removed"] == 1]["removed"].iloc[0]
    assert list(first) == [0]


def test_mimickers_and_structured_pruning(smoke):
    for name, (layers, hidden, heads, _) in SIZES.items():
        df = cell(smoke, "mimic_cell", model=name, kind="linear", depth="2")
        assert set(df["n_layers"]) == {layers} and set(df["hidden_size"]) == {hidden}
        assert df["accuracy"].map(math.isfinite).all()
        st = cell(smoke, "structured_cell", model=name, sparsity="0.5").iloc[0]
        assert len(st["kept_heads"]) == layers
        assert all(0 <= h <= heads for h in st["kept_heads"])
        assert all(0 <= d <= hidden for d in st["kept_head_dims"])
        assert all(0 <= u <= 4 * hidden for u in st["kept_ffn_units"])
        assert math.isfinite(st["accuracy"])


def test_tables_read_every_model(smoke):
    for stage in ("baseline", "pruning", "mimic", "structured", "overview"):
        table = pd.read_parquet(paths.tables(stage, str(smoke))["table"])
        assert set(table["model"]) == set(SIZES), stage
