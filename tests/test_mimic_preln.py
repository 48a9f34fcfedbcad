"""Pre-LN ("stable layer norm") correctness of the mimic cell (issue #16): the classifier head
reads the encoder's output after its final LayerNorm, which the cache stores as ``final``;
cached state L precedes that LayerNorm. The mimicker's last target and the fallback reference
accuracy must be ``final``. A tiny pre-LN world (tests/mimic_tiny.py, ``stable=True``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mimic_tiny import MODEL, PRETRAIN, build_world, tiny_config
from test_mimic_run import QUIET, capture_mimicker, check_common, fits, run_tiny

from workflow_scripts.backbones.cachefile import CacheFile, write_cache
from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.registry import load_classifier
from workflow_scripts.data.loader import load_split
from workflow_scripts.mimic import plan
from workflow_scripts.mimic import run as mimic_run
from workflow_scripts.mimic.model import ClassifierHead

L = PRETRAIN["layers"]
FINAL = "final (after the encoder's final LayerNorm)"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("mimic_preln"), stable=True)


def head_logits(model, states: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ClassifierHead.from_model(model)(torch.from_numpy(states.astype(np.float32))).numpy()


def test_head_on_cached_final_reproduces_the_pre_ln_model(world):
    model = load_classifier(world["model"]).eval()
    assert model.config.do_stable_layer_norm
    audio, labels, _ = load_split(world["root"], pd.read_parquet(world["manifest"]), "testing")
    logits = predict(model, audio, torch.device("cpu"))
    cache = CacheFile(world["test_cache"])
    assert "final" in cache.shapes and cache.n_layers == L
    via_final = head_logits(model, cache.read_state("final"))
    via_last = head_logits(model, cache.read_state(L))
    scale = np.abs(logits).max()
    assert np.abs(via_final - logits).max() < 1e-3 * scale  # float16 rounding of the cache
    assert np.abs(via_last - logits).max() > 0.3 * scale  # state L precedes the final LN
    # in this world the two even predict differently: the reference test below can tell
    acc = [accuracy_report(x, labels, 3)["accuracy"] for x in (logits, via_final, via_last)]
    assert acc[0] == acc[1] != acc[2]


@pytest.mark.parametrize("depth, layers", [(1, ["final"]), (2, [1, "final"])])
def test_the_last_stage1_target_is_what_the_head_reads(world, monkeypatch, depth, layers):
    """Fails on the old behaviour (the last target was cached state L)."""
    seen = capture_mimicker(monkeypatch)
    sl, r, curves = run_tiny(world, "linear", depth)  # depth 2: block (0-1) of the table
    check_common(world, r, curves, sl)
    assert list(r.target_layers) == [*layers[:-1], L] and r.last_target == FINAL
    assert fits(world, seen["targets"], layers)
    assert not fits(world, seen["targets"], [*layers[:-1], L])


def test_reference_accuracy_from_the_testing_cache_reads_final(world):
    """A baseline cell that counts other clips: the head on the testing cache's ``final``
    gives the model's own accuracy; state L would not (see the first test)."""
    cfg = tiny_config()
    sl = plan.cell_slice(cfg, MODEL, "no_mimic", "0")
    names = plan.cell_inputs(cfg, model=MODEL, kind="no_mimic", depth="0")
    inputs = {**{k: world[k] for k in names}, "baseline": world["baseline_other"]}
    cell, *_ = mimic_run.run_cell(inputs, sl, world["root"], "cpu", QUIET)
    r = cell.iloc[0]
    assert r.backbone_accuracy_source == "testing cache" and r.last_target == "none"
    model = load_classifier(world["model"]).eval()
    cache = CacheFile(world["test_cache"])
    labels = cache.read("labels")
    want = accuracy_report(head_logits(model, cache.read_state("final")), labels, 3)
    wrong = accuracy_report(head_logits(model, cache.read_state(L)), labels, 3)
    assert r.backbone_accuracy == want["accuracy"] != wrong["accuracy"]
    assert r.backbone_accuracy == pd.read_parquet(world["baseline"]).accuracy[0]


def test_a_pre_ln_cache_without_final_is_refused(world, tmp_path):
    """A cache written before ``final`` was stored would silently give state L."""
    c = CacheFile(world["train_cache"])
    old = tmp_path / "training.safetensors"
    arrays = {"hidden_states": np.stack([c.read_state(i) for i in c.states]),
              "feature_projection": c.read("feature_projection")}  # fmt: skip
    write_cache(old, arrays, c.read("labels"), c.paths, meta={"model_sha256": "tiny"})
    model = load_classifier(world["model"])
    inputs = {"train_cache": str(old), "val_cache": world["val_cache"],
              "test_cache": world["test_cache"]}  # fmt: skip
    with pytest.raises(ValueError, match="pre-LN model without 'final'"):
        mimic_run.open_caches(inputs, model)
