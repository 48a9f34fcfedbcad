"""Written results get the umask's permissions, also where safetensors writes 0600: the helper
itself, and every place that finalises a model folder (fine-tuned model, pretrained backbone,
training checkpoint, structured-pruned model, random real-size checkpoint)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from workflow_scripts.core.files import apply_umask, current_umask, umask_mode

UMASK = 0o027  # a lab's group folder: group may read, others nothing
FILE_MODE, DIR_MODE = 0o640, 0o750


@pytest.fixture
def umask():
    old = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """relative path -> permission bits of everything below ``root`` (and root itself)."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def assert_umask_modes(root: Path) -> None:
    for rel, mode in modes(root).items():
        want = DIR_MODE if (root / rel).is_dir() else FILE_MODE
        assert mode == want, f"{rel}: {oct(mode)} != {oct(want)}"


def test_apply_umask_files_folders_executables_links(tmp_path, umask):
    assert current_umask() == UMASK
    assert umask_mode(False) == FILE_MODE and umask_mode(True) == DIR_MODE
    d = tmp_path / "folder"
    (d / "sub").mkdir(parents=True)
    os.chmod(d / "sub", 0o700)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(d / "sub" / "w.safetensors"))
    assert stat.S_IMODE((d / "sub" / "w.safetensors").stat().st_mode) == 0o600  # the problem
    (d / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(d / "run.sh", 0o700)
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    os.chmod(outside, 0o600)
    (d / "link").symlink_to(outside)
    apply_umask(d)
    assert stat.S_IMODE((d / "sub").stat().st_mode) == DIR_MODE
    assert stat.S_IMODE((d / "sub" / "w.safetensors").stat().st_mode) == FILE_MODE
    assert stat.S_IMODE((d / "run.sh").stat().st_mode) == DIR_MODE  # executable stays so
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600  # a link's target is not touched
    apply_umask(tmp_path / "missing")  # nothing there: nothing to do


def test_finetuned_model_folder(tmp_path, umask):
    from transformers import HubertForSequenceClassification

    from workflow_scripts.backbones.finetune import save_model
    from workflow_scripts.backbones.registry import small_config

    cfg = small_config("hubert", {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64})
    cfg.num_labels = 3
    save_model(HubertForSequenceClassification(cfg), tmp_path / "ft", {"meta.json": "{}"})
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    assert_umask_modes(tmp_path / "ft")


def test_pretrained_backbone_and_checkpoint(tmp_path, umask):
    from safetensors.torch import save_file

    from workflow_scripts.backbones.pretrain import finalize
    from workflow_scripts.core.checkpoint import save_checkpoint

    partial = tmp_path / "bb.partial"
    partial.mkdir()
    save_file({"w": torch.ones(3)}, str(partial / "model.safetensors"))
    finalize(partial, tmp_path / "bb", {"rule": "pretrain_backbone"})
    assert_umask_modes(tmp_path / "bb")

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "ckpt", model, opt, 1, np.random.default_rng(0), [], "h")
    assert_umask_modes(tmp_path / "ckpt")


def test_structured_pruned_model(tmp_path, umask):
    from transformers import HubertForSequenceClassification

    from workflow_scripts.backbones.registry import small_config
    from workflow_scripts.structured.layers import structured_layers
    from workflow_scripts.structured.pruned import pruned_model, save_pruned

    cfg = small_config("hubert", {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64})
    cfg.num_labels = 3
    model = HubertForSequenceClassification(cfg).eval()
    save_pruned(pruned_model(model, structured_layers(model)), tmp_path / "pruned")
    assert_umask_modes(tmp_path / "pruned")


def test_random_real_size_checkpoint_folder(tmp_path, umask, monkeypatch):
    # the writer of models/real/<name>/, on a shrunk copy of an entry (same code path)
    from workflow_scripts.backbones import architectures
    from workflow_scripts.core.resources import hub_architectures

    entry = hub_architectures()["microsoft/wavlm-base"]
    small = {**entry, "config": {**entry["config"], "num_hidden_layers": 1, "hidden_size": 32,
                                 "num_attention_heads": 2, "intermediate_size": 16,
                                 "conv_dim": [8] * 7, "num_conv_pos_embeddings": 4,
                                 "num_conv_pos_embedding_groups": 2}}  # fmt: skip
    monkeypatch.setattr(architectures, "hub_architectures", lambda: {"microsoft/wavlm-base": small})
    architectures.random_checkpoint("wavlm-base", tmp_path / "wavlm-base")
    assert_umask_modes(tmp_path / "wavlm-base")
