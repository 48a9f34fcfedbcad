"""Exported models round trip (issue #19): each export loads from its folder alone and
reproduces its cell's test accuracy on the tiny world's clips (tests/mimic_tiny.py) -
layer-pruned headline checkpoints with a plain ``from_pretrained`` (WavLM included: its
relative-position table moves to the new first block), mimicked models with
``mimic.model.load_mimicked``, structured-pruned models with ``structured.pruned.load_pruned``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mimic_tiny import MODEL, PRETRAIN, build_world, tiny_config
from transformers import AutoModelForAudioClassification

from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.registry import small_config
from workflow_scripts.core.config import validate_config
from workflow_scripts.data.loader import load_split

torch.set_num_threads(1)
CPU = torch.device("cpu")
QUIET = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("export_world"))


def evaluation_set(world, n):
    """(audio, labels) of the evaluation set of ``n`` clips (``split_rows`` order)."""
    audio, labels, _ = load_split(world["root"], pd.read_parquet(world["manifest"]), "testing", n)
    return audio, labels


# ----------------------------------------------------------------------------- layer pruning
def pruning_slice(strategies: dict) -> dict:
    from workflow_scripts.pruning import plan

    cfg = validate_config({
        "models": {MODEL: {"pretrain": dict(PRETRAIN)}}, "outputs": ["pruning"],
        "evaluation": {"test_clips": 8},
        "pruning": {"strategies": strategies, "threshold": 0.01, "batch_size": 4,
                    "latency": {"enabled": False}},
    })  # fmt: skip
    return plan.cell_slice(cfg, strategy=next(iter(strategies)), model=MODEL)


@pytest.mark.parametrize("strategy, settings", [("backward", {}), ("random", {"seeds": [0, 1]})])
def test_pruning_headline_loads_with_plain_from_pretrained(world, tmp_path, strategy, settings):
    from workflow_scripts.backbones.registry import load_classifier
    from workflow_scripts.pruning.run import run_cell
    from workflow_scripts.pruning.sweeps import sweep_logits

    cell = pruning_slice({strategy: settings})
    out = tmp_path / "export"
    df, _ = run_cell(cell, model=MODEL, model_dir=world["model"], manifest=world["manifest"],
                     root=world["root"], device="cpu", export_dir=str(out))  # fmt: skip
    info = json.loads((out / "export.json").read_text())
    heads = df[df.headline & df.removed.notna()]
    assert len(info["checkpoints"]) == len(heads) == len(settings.get("seeds", [None]))
    audio, labels = evaluation_set(world, 8)
    full = load_classifier(world["model"]).eval()
    for entry, (_, row) in zip(info["checkpoints"], heads.iterrows(), strict=True):
        folder = out / entry["folder"]
        assert entry["folder"] == ("." if pd.isna(row.seed) else f"seed-{row.seed}")
        model = AutoModelForAudioClassification.from_pretrained(folder).eval()  # no project code
        assert model.config.num_hidden_layers == PRETRAIN["layers"] - row.n_removed > 0
        assert entry["removed_index"] == list(row.removed) and entry["eval_clips"] == 8
        assert entry["removed_layers"] == [i + 1 for i in row.removed]  # numbered 1..L
        assert entry["kept_layers"] == [i + 1 for i in entry["kept_layer_index"]]
        logits = predict(model, audio, CPU)
        rep = accuracy_report(logits, labels, 3)
        assert rep["accuracy"] == row.accuracy == entry["accuracy"]
        # the logits the cell's prefix-resumed sweep computed for that removal set
        [swept] = sweep_logits(full, audio, [list(row.removed)], CPU, batch_size=4)
        np.testing.assert_allclose(logits, swept, atol=1e-5)
        assert (folder / "preprocessor_config.json").is_file()
    assert (df.n_utterances == 8).all() and (df.eval_clips == 8).all()
    assert set(heads.n_removed) == {PRETRAIN["layers"] - 1}  # threshold 0.01: every n keeps


def test_wavlm_export_without_its_first_block_gives_identical_logits(tmp_path):
    """Removing WavLM's block 0 moves the relative-position table; the saved model loads
    with no missing or unexpected weight and gives the pruned model's logits exactly."""
    from workflow_scripts.pruning.export import export_headline
    from workflow_scripts.pruning.layers import remove_layers

    cfg = small_config("wavlm", {**PRETRAIN, "classifier_proj": 8})
    cfg.num_labels = 3
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(cfg).eval()
    df = pd.DataFrame({"model": ["w"], "strategy": ["forward"], "seed": pd.array([None], "Int64"),
                       "n_removed": [2], "removed": [[0, 2]], "headline": [True],
                       "accuracy": [0.5]})  # fmt: skip
    export_headline(model, df, tmp_path)
    loaded, info = AutoModelForAudioClassification.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.num_hidden_layers == 1 and loaded.config.kept_layer_ids == [1]
    assert hasattr(loaded.wavlm.encoder.layers[0].attention, "rel_attn_embed")
    audio = np.random.default_rng(0).normal(size=(3, 16000)).astype(np.float32)
    want = predict(remove_layers(model, [0, 2]), audio, CPU)
    assert np.array_equal(predict(loaded.eval(), audio, CPU), want)


# ----------------------------------------------------------------------------- mimickers
@pytest.mark.parametrize("kind, depth", [("transformer", 1), ("no_mimic", 0)])
def test_mimicked_model_loads_and_reproduces_the_cell(world, tmp_path, kind, depth):
    from workflow_scripts.backbones.cachefile import CacheFile
    from workflow_scripts.backbones.rows import CachedRows
    from workflow_scripts.mimic import plan
    from workflow_scripts.mimic.model import MimickedModel, load_mimicked
    from workflow_scripts.mimic.run import run_cell
    from workflow_scripts.mimic.train import mimic_logits

    cfg = tiny_config()
    sl = plan.cell_slice(cfg, MODEL, kind, str(depth))
    inputs = {k: world[k] for k in plan.cell_inputs(cfg, model=MODEL, kind=kind, depth=depth)}
    cell, *_ = run_cell(inputs, sl, world["root"], "cpu", QUIET, export_dir=str(tmp_path / "x"))
    r = cell.iloc[0]
    mm = load_mimicked(tmp_path / "x")
    assert isinstance(mm, MimickedModel) and not mm.training
    assert mm.config.num_hidden_layers == PRETRAIN["layers"]
    assert json.loads((tmp_path / "x" / "export.json").read_text())["cell"]["kind"] == kind
    with pytest.raises(OSError):  # not a transformers checkpoint: refused, not half-loaded
        AutoModelForAudioClassification.from_pretrained(tmp_path / "x")
    # the cell's accuracy: the loaded mimicker and head on the testing cache's features
    test = CacheFile(world["test_cache"])
    y = test.read("labels")
    rows = np.arange(test.n)
    cached = mimic_logits(mm.mimicker, mm.head, CachedRows(test, "feature_projection"), rows,
                          8, CPU)  # fmt: skip
    assert accuracy_report(cached, y, 3)["accuracy"] == r.accuracy and r.eval_clips == test.n
    # and end to end on the raw audio of the same clips
    audio, labels = evaluation_set(world, None)
    assert accuracy_report(predict(mm, audio, CPU), labels, 3)["accuracy"] == r.accuracy


# ----------------------------------------------------------------------------- structured
def test_structured_model_loads_from_its_folder_alone(world, tmp_path):
    from workflow_scripts.backbones.registry import load_classifier
    from workflow_scripts.structured.pruned import load_pruned
    from workflow_scripts.structured.run import array_batches, prune_cell, training_views

    model = load_classifier(world["model"])
    x0, teacher = training_views(world["train_cache"], [1, 2, 3], None)
    audio, labels = evaluation_set(world, 8)
    cell = {"target": 0.5, "gates": {"heads": True, "head_dims": True, "ffn_units": True},
            "init_log_alpha": 3.0, "straight_through": False, "steps": 4, "batch_size": 4,
            "lr": 2e-4, "gate_lr": 0.05, "lambda_lr": 0.5, "warmup_frac": 0.3, "seed": 0,
            "distill": {"loss": "l1", "cos_weight": 1.0}, "eval_batch_size": 4,
            "latency": {"batch_size": 2, "warmup": 0, "repeats": 1}}  # fmt: skip
    row, *_ = prune_cell(model, cell, x0, teacher, array_batches(audio, labels, 4), "cpu",
                        out_dir=tmp_path / "s")  # fmt: skip
    loaded = load_pruned(tmp_path / "s")  # no base model: its own config.json and structure
    rep = accuracy_report(predict(loaded, audio, CPU), labels, 3)
    assert rep["accuracy"] == row["accuracy"] and row["eval_clips"] == 8
    assert json.loads(Path(tmp_path / "s" / "structure.json").read_text())["structure"]
