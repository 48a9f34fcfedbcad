"""The paper's five architectures (config/architectures.yaml): the values the public configs
give, parameter estimates that agree with the models transformers builds from them, and the
random-weight checkpoints `make real-models` writes, loaded through the same `hf:` path as a
real checkpoint (a fresh keyword head on the saved backbone)."""

from __future__ import annotations

import json

import pytest
import torch

from workflow_scripts.backbones import architectures
from workflow_scripts.core import resources

HUBS = {  # hub id -> (name, layers, hidden, heads, ffn, pre-LN, front-end norm)
    "facebook/wav2vec2-base": ("wav2vec2-base", 12, 768, 12, 3072, False, "group"),
    "facebook/wav2vec2-large": ("wav2vec2-large", 24, 1024, 16, 4096, False, "group"),
    "microsoft/wavlm-base": ("wavlm-base", 12, 768, 12, 3072, False, "group"),
    "microsoft/wavlm-large": ("wavlm-large", 24, 1024, 16, 4096, True, "layer"),
    "facebook/hubert-base-ls960": ("hubert-base", 12, 768, 12, 3072, False, "group"),
}


def test_the_five_architectures():
    archs = resources.hub_architectures()
    assert set(archs) == set(HUBS)
    for hub, (name, layers, hidden, heads, ffn, pre_ln, norm) in HUBS.items():
        cfg = archs[hub]["config"]
        assert archs[hub]["name"] == name
        assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
                cfg["intermediate_size"]) == (layers, hidden, heads, ffn)  # fmt: skip
        assert (cfg["do_stable_layer_norm"], cfg["feat_extract_norm"]) == (pre_ln, norm)
        assert cfg["conv_dim"] == [512] * 7 and cfg["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
        assert cfg["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2] and cfg["conv_bias"] is False
        assert (cfg["num_conv_pos_embeddings"], cfg["num_conv_pos_embedding_groups"]) == (128, 16)
        if cfg["model_type"] == "wavlm":
            assert (cfg["num_buckets"], cfg["max_bucket_distance"]) == (320, 800)
        built = architectures.architecture_config(hub)
        assert type(built).__name__.lower().startswith(cfg["model_type"])
        assert all(getattr(built, k) == v for k, v in cfg.items() if k != "model_type")


@pytest.mark.parametrize("hub", list(HUBS))
def test_parameter_estimates_match_the_built_models(hub, tmp_path):
    """estimate_params of a written folder (its config.json) and of the hub id are within 2% of
    the parameters of the base model transformers builds (on the meta device: no memory)."""
    from transformers import AutoModel

    cfg = architectures.architecture_config(hub)
    with torch.device("meta"):
        count = sum(p.numel() for p in AutoModel.from_config(cfg).parameters())
    cfg.save_pretrained(tmp_path)  # the config.json random_checkpoint writes
    for estimate in (
        resources.estimate_params({"hf": str(tmp_path)}),
        resources.estimate_params({"hf": hub}),
        resources.known_params()[hub],
    ):
        assert abs(estimate - count) / count < 0.02, (hub, estimate, count)  # fmt: skip


def shrunk(hub: str) -> dict:
    """``hub``'s entry with a tiny width and depth (same model type, norms and front end)."""
    entry = resources.hub_architectures()[hub]
    small = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
             "intermediate_size": 16, "conv_dim": [8] * 7, "num_conv_pos_embeddings": 4,
             "num_conv_pos_embedding_groups": 2, "classifier_proj_size": 8}  # fmt: skip
    return {**entry, "config": {**entry["config"], **small}}


def test_random_checkpoint_loads_as_a_classifier_with_a_fresh_head(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from workflow_scripts.backbones.registry import encoder_of, load_classifier

    hub = "microsoft/wavlm-large"
    monkeypatch.setattr(architectures, "hub_architectures", lambda: {hub: shrunk(hub)})
    out = architectures.random_checkpoint("wavlm-large", tmp_path / "wavlm-large", seed=3)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "DONE"}
    info = json.loads((out / "random_checkpoint.json").read_text())
    assert (info["hub_id"], info["seed"], info["dtype"]) == (hub, 3, "float16")
    saved = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float16}

    model = load_classifier(str(out), labels=["yes", "no", "up"])  # the workflow's `hf:` path
    assert type(model).__name__ == "WavLMForSequenceClassification"
    assert model.config.do_stable_layer_norm and model.config.num_labels == 3
    enc = encoder_of(model).state_dict()
    assert set(saved) == set(enc)  # every backbone weight comes from the file ...
    for k, v in saved.items():
        assert torch.equal(enc[k], v.float()), k
    assert model.classifier.weight.shape == (3, 8)  # ... the head is new


def test_write_all_skips_current_and_rewrites_changed(tmp_path, monkeypatch):
    hub = "facebook/hubert-base-ls960"
    entry = shrunk(hub)
    monkeypatch.setattr(architectures, "hub_architectures", lambda: {hub: entry})
    logs: list[str] = []
    architectures.write_all(tmp_path, ["hubert-base"], log=logs.append)
    architectures.write_all(tmp_path, ["hubert-base"], log=logs.append)
    assert "writing" in logs[0] and "current" in logs[1]
    entry["config"]["num_hidden_layers"] = 3  # an edited architectures file
    architectures.write_all(tmp_path, ["hubert-base"], log=logs.append)
    assert "writing" in logs[2]
    assert json.loads((tmp_path / "hubert-base/config.json").read_text())["num_hidden_layers"] == 3
    with pytest.raises(KeyError, match="unknown architecture"):
        architectures.hub_id_of("hubert-xxl")
