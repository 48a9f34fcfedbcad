"""Backbones: registry validation, safetensors-only loading of local checkpoints, resumable
fine-tuning, padding/masking, pretraining and the hidden-state cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workflow_scripts.backbones import finetune as F
from workflow_scripts.backbones import registry as B
from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.plan import resolve_finetune
from workflow_scripts.core.config import ConfigError, validate_config

TINY = {"hidden": 32, "layers": 3, "heads": 2, "ffn": 64, "conv_dim": [16, 32, 32]}
LABELS = ["yes", "no", "up"]


def tiny_classifier(arch="wav2vec2", seed=0):
    from transformers import AutoModelForAudioClassification

    torch.manual_seed(seed)
    cfg = B.small_config(arch, TINY)
    cfg.num_labels = len(LABELS)
    return AutoModelForAudioClassification.from_config(cfg)


@pytest.fixture(scope="module")
def saved_backbone(tmp_path_factory):
    """A tiny HuBERT base model saved with save_pretrained (like a shipped backbone)."""
    from transformers import HubertModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "hubert-tiny"
    HubertModel(B.small_config("hubert", TINY)).save_pretrained(path, safe_serialization=True)
    return path


def test_registry_rejects_unknown_arch_and_bad_ids():
    with pytest.raises(ConfigError, match="'bert' is not one of"):
        validate_config({"models": {"m": {"pretrain": {**TINY, "arch": "bert"}}}})
    with pytest.raises(ConfigError, match=r"config.models.m.hf"):
        validate_config({"models": {"m": {"hf": "has space"}}})
    with pytest.raises(ConfigError, match="needs exactly one of"):
        validate_config({"models": {"m": {"hf": "x", "pretrain": {**TINY, "arch": "hubert"}}}})
    with pytest.raises(ConfigError, match="does not match"):
        validate_config({"models": {"bad/name": {"hf": "x"}}})
    with pytest.raises(ValueError, match="unknown arch"):
        B.small_config("bert", TINY)


def test_local_checkpoint_loads_through_the_hf_path(saved_backbone):
    model = B.load_classifier(str(saved_backbone), labels=LABELS)
    assert type(model).__name__ == "HubertForSequenceClassification"
    assert model.config.id2label[1] == "no" and model.config.num_labels == 3
    # the backbone weights are the saved ones (not a fresh init)
    from safetensors.torch import load_file

    saved = load_file(saved_backbone / "model.safetensors")
    key = next(k for k in saved if k.endswith("encoder.layers.0.attention.k_proj.weight"))
    loaded = B.encoder_of(model).state_dict()[key]
    assert torch.equal(loaded, saved[key].float())
    logits = model(torch.randn(2, 16000)).logits
    assert logits.shape == (2, 3)


def test_float16_checkpoint_loads_as_float32(tmp_path):
    from transformers import WavLMModel

    WavLMModel(B.small_config("wavlm", TINY)).half().save_pretrained(tmp_path / "m")
    model = B.load_classifier(str(tmp_path / "m"), labels=LABELS)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_pickle_checkpoints_are_refused(saved_backbone, tmp_path):
    from safetensors.torch import load_file

    dst = tmp_path / "pickled"
    dst.mkdir()
    (dst / "config.json").write_text((saved_backbone / "config.json").read_text())
    torch.save(load_file(saved_backbone / "model.safetensors"), dst / "pytorch_model.bin")
    with pytest.raises(OSError):
        B.load_classifier(str(dst), labels=LABELS)


def test_padding_and_masking_give_the_unpadded_answer():
    model = tiny_classifier("wav2vec2").eval()
    short, full = torch.randn(12000), torch.randn(16000)
    batch, mask = B.pad_batch([short, full])
    assert batch.shape == (2, 16000) and mask[0].sum() == 12000 and mask[1].sum() == 16000
    assert torch.all(batch[0, 12000:] == 0)
    x = B.normalize_audio(batch, mask)
    alone = B.normalize_audio(short[None])
    torch.testing.assert_close(x[0, :12000], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.all(x[0, 12000:] == 0)
    with torch.inference_mode():
        padded = model(x, attention_mask=mask).logits[0]
        single = model(alone).logits[0]
        unmasked = model(x).logits[0]
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(unmasked, single, atol=1e-4)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    t = np.arange(16000) / 16000
    audio = np.stack([np.sin(2 * np.pi * (200 + 150 * c) * t) for c in y]).astype(np.float32)
    return audio + 0.05 * rng.standard_normal(audio.shape).astype(np.float32), y


def test_finetuning_learns_and_resumes_after_a_kill(tmp_path, monkeypatch):
    audio, y = _data()
    spec = resolve_finetune({"steps": 8, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 3},
                              None)  # fmt: skip
    ref = tiny_classifier()
    F.train_classifier(ref, audio, y, spec, torch.device("cpu"), None, progress=False)

    killed = tiny_classifier()
    calls = {"n": 0}
    real_clip = torch.nn.utils.clip_grad_norm_

    def dying_clip(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", dying_clip)
    with pytest.raises(KeyboardInterrupt):
        F.train_classifier(killed, audio, y, spec, torch.device("cpu"), tmp_path, progress=False)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    assert (tmp_path / F.FEATURES_FILE).is_file()  # complete: renamed into place

    resumed = tiny_classifier(seed=1)  # different init: everything must come from the checkpoint
    logged = []
    out = F.train_classifier(resumed, audio, y, spec, torch.device("cpu"), tmp_path,
                             logged.append, progress=False)  # fmt: skip
    assert out["resumed_from"] == 3
    assert any("reusing the frozen CNN features" in m for m in logged)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)

    other = {**spec, "lr": 1e-3}
    out = F.train_classifier(tiny_classifier(), audio, y, other, torch.device("cpu"), tmp_path,
                             progress=False)  # fmt: skip
    assert out["resumed_from"] == 0  # a checkpoint made with other settings is discarded
    F.release_features(tmp_path)
    assert not (tmp_path / F.FEATURES_FILE).exists()


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """The clips of ``_data(20)`` as wav files with a manifest's rows (path, label_idx)."""
    import pandas as pd
    import soundfile as sf

    root = tmp_path_factory.mktemp("clips")
    audio, y = _data(20)
    paths = [f"c{i:02d}.wav" for i in range(len(y))]
    for p, a in zip(paths, audio, strict=True):
        sf.write(root / p, a, 16000, subtype="FLOAT")
    return root, pd.DataFrame({"path": paths, "label_idx": y}), audio, y


@pytest.mark.parametrize("cached", [False, True])
def test_finetuning_streamed_from_files_equals_in_memory(clip_files, tmp_path, cached):
    """Clips read per batch from files (2 loader workers) train bit-identical weights to the
    in-memory array; the frozen features (cached) are a file of the work folder, rewritten
    when the CNN changes."""
    root, rows, audio, y = clip_files
    spec = resolve_finetune({"steps": 5, "batch_size": 6, "lr": 3e-3, "cache_features": cached,
                             "checkpoint_every": 2, "workers": 2}, None)  # fmt: skip
    ref = tiny_classifier()
    F.train_classifier(ref, audio, y, spec, torch.device("cpu"), None, progress=False)
    streamed = tiny_classifier()
    clips = F.ClipSet.from_rows(root, rows)
    F.train_classifier(streamed, clips, None, spec, torch.device("cpu"), tmp_path, progress=False)
    for (k, a), b in zip(ref.state_dict().items(), streamed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert (tmp_path / F.FEATURES_FILE).is_file() == cached
    if cached:  # another CNN (another model's weights): the file is not reused
        (tmp_path / "checkpoint").rename(tmp_path / "old")
        logged = []
        F.train_classifier(tiny_classifier(seed=3), clips, None, spec, torch.device("cpu"),
                           tmp_path, logged.append, progress=False)  # fmt: skip
        assert not any("reusing" in m for m in logged)
    # the loader never draws from torch's global RNG
    torch.manual_seed(0)
    rng_state = torch.get_rng_state()
    batches = F.DrawnBatches(np.random.default_rng(0), len(clips), 4, 3)
    got = [idx for _, _, idx in F.clip_loader(clips, batches, workers=1)]
    assert torch.equal(torch.get_rng_state(), rng_state)
    draw = np.random.default_rng(0)
    assert all(np.array_equal(g, draw.choice(len(clips), 4, replace=False)) for g in got)


def test_predict_batches_equals_predict(clip_files):
    from workflow_scripts.backbones.evaluate import predict_batches
    from workflow_scripts.data.loader import iter_batches

    root, rows, audio, y = clip_files
    model = tiny_classifier()
    logits, labels = predict_batches(model, iter_batches(root, rows, 8), torch.device("cpu"))
    assert np.array_equal(logits, predict(model, audio, torch.device("cpu"), batch_size=8))
    assert np.array_equal(labels, y)


@pytest.mark.parametrize("arch", ["wav2vec2", "hubert", "wavlm"])
def test_training_on_cached_cnn_features_equals_training_through_the_frozen_cnn(arch):
    audio, y = _data(16)
    spec = resolve_finetune({"steps": 4, "batch_size": 8, "lr": 3e-3}, None)
    models = {}
    for cached in (False, True):
        model = tiny_classifier(arch)
        F.train_classifier(model, audio, y, {**spec, "cache_features": cached},
                           torch.device("cpu"), None, progress=False)  # fmt: skip
        models[cached] = model
    # the CNN is back in place and unchanged, and the trained weights agree (up to the
    # float16 storage of the cached features)
    assert "forward" not in vars(B.encoder_of(models[True]).feature_extractor)
    for (k, a), b in zip(models[False].state_dict().items(), models[True].state_dict().values(),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-2, msg=k)
    moved = [k for k, v in tiny_classifier(arch).state_dict().items()
             if not torch.equal(v, models[True].state_dict()[k])]  # fmt: skip
    assert moved and not any("feature_extractor" in k for k in moved)
    x = torch.from_numpy(audio[:4])
    torch.testing.assert_close(models[False](x).logits, models[True](x).logits, atol=5e-3,
                               rtol=1e-2)  # fmt: skip


def test_finetuning_improves_accuracy():
    audio, y = _data(48)
    model = tiny_classifier()
    before = accuracy_report(predict(model, audio, torch.device("cpu")), y, 3)["accuracy"]
    spec = resolve_finetune({"steps": 40, "batch_size": 16, "lr": 3e-3}, None)
    F.train_classifier(model, audio, y, spec, torch.device("cpu"), None, progress=False)
    after = accuracy_report(predict(model, audio, torch.device("cpu")), y, 3)
    assert after["accuracy"] >= 0.9 > before + 0.2
    assert after["ci_lo"] <= after["accuracy"] <= after["ci_hi"]


def test_saved_model_is_complete_only_with_done_marker(tmp_path):
    model = tiny_classifier()
    F.save_model(model, tmp_path / "m", {"note.txt": "x"})
    assert B.is_complete_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "DONE").unlink()
    assert not B.is_complete_checkpoint(tmp_path / "m")
    assert not (tmp_path / "m.partial").exists()
    reloaded = B.load_classifier(str(tmp_path / "m"))
    x = torch.randn(1, 16000)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x).logits, model.eval()(x).logits)


@pytest.mark.parametrize("arch", ["wav2vec2", "hubert", "wavlm"])
def test_pretraining_runs_a_few_steps_and_saves_a_loadable_backbone(arch, tmp_path):
    from workflow_scripts.backbones.pretrain import finalize, pretrain

    audio, _ = _data(16)
    spec = {**TINY, "arch": arch, "steps": 3, "batch_size": 4, "lr": 1e-3, "clusters": 4,
            "checkpoint_every": 2, "save_dtype": "float16"}  # fmt: skip
    res = pretrain(audio, spec, tmp_path / "m", tmp_path / "work", torch.device("cpu"),
                   log=lambda *_: None, progress=False)  # fmt: skip
    assert np.isfinite(res["summary"]["final_loss"])
    finalize(res["partial_dir"], tmp_path / "m", {"steps": 3})
    assert B.is_complete_checkpoint(tmp_path / "m")
    model = B.load_classifier(str(tmp_path / "m"), labels=LABELS)
    assert model.config.model_type == arch


def test_mask_and_negatives_shapes():
    from workflow_scripts.backbones.pretrain import mask_indices, sample_negatives

    rng = np.random.default_rng(0)
    m = mask_indices(4, 49, 0.5, 4, rng)
    assert m.shape == (4, 49) and (m.sum(1) >= 8).all() and (m.mean() < 0.8)
    neg = sample_negatives(m, 5, rng)
    assert neg.shape == (4, 49, 5)
    for b in range(4):  # negatives stay inside their own utterance and are never the frame
        assert ((neg[b] >= b * 49) & (neg[b] < (b + 1) * 49)).all()
        assert not (neg[b] - b * 49 == np.arange(49)[:, None]).any()


def test_cache_holds_every_layer_once(tmp_path):
    from workflow_scripts.backbones.cache import extract_hidden_states
    from workflow_scripts.backbones.cachefile import cache_info, read_layers, write_cache

    model = tiny_classifier("wavlm").eval()
    audio, y = _data(10)
    arrays = extract_hidden_states(model, audio, torch.device("cpu"), batch_size=4,
                                   progress=False)  # fmt: skip
    hs = arrays["hidden_states"]
    assert hs.shape == (TINY["layers"] + 1, 10, 49, TINY["hidden"]) and hs.dtype == np.float16
    with torch.inference_mode():
        ref = B.encoder_of(model)(B.normalize_audio(torch.from_numpy(audio[:4])),
                                  output_hidden_states=True)  # fmt: skip
    np.testing.assert_allclose(hs[2, :4], ref.hidden_states[2].numpy(), atol=2e-2, rtol=1e-2)
    write_cache(tmp_path / "c.safetensors", arrays, y, [f"p{i}" for i in range(10)])
    info = cache_info(tmp_path / "c.safetensors")
    assert info["shapes"]["feature_projection"] == (10, 49, TINY["hidden"])
    assert json.loads(info["metadata"]["paths"])[3] == "p3"
    np.testing.assert_array_equal(read_layers(tmp_path / "c.safetensors", [1, 3], limit=6),
                                  hs[[1, 3], :6])  # fmt: skip


def test_shipped_backbones_are_what_config_pretrain_yaml_makes():
    """models/ holds what `config/pretrain.yaml` describes: every spec key matches the
    provenance of the shipped folder, the default config uses it (the keyword grid loads it
    through `hf:`, or a default SpeechLLM names it as its encoder), and the folders are
    complete safetensors checkpoints within the size budget (40 MB together)."""
    import yaml

    from workflow_scripts.core.provenance import REPO_ROOT

    pretrain_cfg = yaml.safe_load((REPO_ROOT / "config/pretrain.yaml").read_text())
    default = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    encoders = set()  # the shipped SpeechLLMs' encoders (folders next to theirs)
    for spec in default["speechllm"]["models"].values():
        sllm = json.loads((REPO_ROOT / spec["hf"] / "config.json").read_text())
        encoders.add((REPO_ROOT / spec["hf"] / sllm["encoder"]).resolve().name)
    total = 0
    for name, entry in pretrain_cfg["models"].items():
        folder = REPO_ROOT / pretrain_cfg["pretrained_dir"] / name
        assert B.is_complete_checkpoint(folder), name
        prov = json.loads((folder / "provenance.json").read_text())
        for key, value in entry["pretrain"].items():
            assert prov["pretrain_config"][key] == value, (name, key)
        assert prov["steps"] == entry["pretrain"]["steps"] and prov["resumed_from"] == 0
        if name in default["models"]:
            assert default["models"][name]["hf"] == f"{pretrain_cfg['pretrained_dir']}/{name}"
        else:
            assert name in encoders, name
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
        total += sum(f.stat().st_size for f in folder.iterdir())
    assert total <= 40e6


# ----------------------------------------------------------------------------------------
# One evaluation set across the stages
# ----------------------------------------------------------------------------------------
def test_every_stage_tests_on_the_same_clips(tmp_path, monkeypatch):
    """With one ``evaluation.test_clips`` the baseline cell, the pruning and structured cells
    and the testing-split cache (the mimic cells' test data) select the identical clips,
    through data.loader.split_rows; null = the whole split for all of them."""
    from pathlib import Path
    from types import SimpleNamespace

    import pandas as pd
    import yaml

    from workflow_scripts.backbones import cache_plan
    from workflow_scripts.backbones import plan as bplan
    from workflow_scripts.backbones import run as brun
    from workflow_scripts.data.loader import split_rows
    from workflow_scripts.pruning import plan as pplan
    from workflow_scripts.pruning import run as prun
    from workflow_scripts.structured import plan as splan
    from workflow_scripts.structured import run as srun

    manifest = pd.DataFrame({
        "path": [f"w/{s[:2]}{i:02d}_nohash_0.wav" for s in ("training", "testing")
                 for i in range(12)],
        "split": ["training"] * 12 + ["testing"] * 12, "usable": True, "label_idx": 0,
    })  # fmt: skip
    manifest.loc[13, "usable"] = False  # an unusable clip is never selected
    manifest.to_parquet(tmp_path / "manifest.parquet")
    cached = {}
    monkeypatch.setattr(
        brun,
        "load_classifier",
        lambda _: SimpleNamespace(config=SimpleNamespace(num_hidden_layers=2)),
    )
    monkeypatch.setattr(brun, "sha256_path", lambda _: "sha")
    monkeypatch.setattr(brun, "extract_to_cache",
                        lambda _m, _b, paths, *a: cached.setdefault("paths", paths))  # fmt: skip

    def selections(test_clips):
        cfg = yaml.safe_load((Path(__file__).parent.parent / "config.yaml").read_text())
        cfg["outputs"] = ["baseline", "pruning", "mimic", "structured"]
        cfg["evaluation"] = {"test_clips": test_clips}
        validate_config(cfg)
        model = next(iter(cfg["models"]))
        cached.clear()
        brun.run_cache(cache_plan.cache_slice(cfg, model, "testing"), "m", str(tmp_path /
                       "manifest.parquet"), "root", "out", {}, lambda _: None)  # fmt: skip
        return {
            "baseline": list(brun.evaluation_rows(manifest, bplan.finetune_slice(cfg, model),
                                                  "testing").path),
            "pruning": list(prun.evaluation_rows(manifest, pplan.cell_slice(
                cfg, strategy="forward", model=model)).path),
            "structured": list(srun.evaluation_rows(manifest, splan.cell_slice(
                cfg, model=model, sparsity="0.3")).path),
            "mimic (testing cache)": cached["paths"],
        }  # fmt: skip

    for n, want in ((5, 5), (None, 11), (50, 11)):
        got = selections(n)
        expected = list(split_rows(manifest, "testing", n).path)
        assert len(expected) == want
        assert got == dict.fromkeys(got, expected), n
