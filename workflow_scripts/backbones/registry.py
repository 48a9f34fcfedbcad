"""Speech-transformer backbones: building small ones, loading checkpoints, keyword classifiers.

Every model is a Hugging Face ``transformers`` model (wav2vec2, HuBERT or WavLM), so a user's
real checkpoint (``facebook/wav2vec2-base``, a local ``save_pretrained`` folder, ...) and the
project's small shipped backbones go through the same code. Weights are read from safetensors
only (``use_safetensors=True``); ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workflow_scripts.core.resources import SMALL_CONV

ARCHS = ("wav2vec2", "hubert", "wavlm")


def pick_device(prefer: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if prefer == "cpu":
        return torch.device("cpu")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def small_config(arch: str, spec: dict):
    """A transformers config for a small backbone of ``arch`` from a ``pretrain`` spec.

    The convolutional front end keeps the 320-sample total stride of the real models (49 frames
    per 1-s clip) with fewer, wider-strided layers: on CPU the front end dominates the cost.
    """
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; allowed: {list(ARCHS)}")
    conv_dim = tuple(spec.get("conv_dim", SMALL_CONV["conv_dim"]))
    conv_kernel = tuple(spec.get("conv_kernel", SMALL_CONV["conv_kernel"]))
    conv_stride = tuple(spec.get("conv_stride", SMALL_CONV["conv_stride"]))
    if not len(conv_dim) == len(conv_kernel) == len(conv_stride):
        raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
    common = dict(
        hidden_size=spec["hidden"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        intermediate_size=spec.get("ffn", 4 * spec["hidden"]),
        conv_dim=conv_dim,
        conv_kernel=conv_kernel,
        conv_stride=conv_stride,
        num_feat_extract_layers=len(conv_dim),
        feat_extract_norm="layer",
        conv_bias=True,
        num_conv_pos_embeddings=spec.get("pos_conv_kernel", 16),
        num_conv_pos_embedding_groups=spec.get("pos_conv_groups", 4),
        do_stable_layer_norm=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=spec.get("mask_prob", 0.5),
        mask_time_length=spec.get("mask_length", 4),
        classifier_proj_size=spec.get("classifier_proj", 64),
    )
    if arch == "wav2vec2":
        return Wav2Vec2Config(
            num_codevector_groups=2,
            num_codevectors_per_group=spec.get("codevectors", 64),
            codevector_dim=spec.get("codevector_dim", 64),
            proj_codevector_dim=spec.get("codevector_dim", 64),
            num_negatives=spec.get("num_negatives", 20),
            diversity_loss_weight=0.1,
            **common,
        )
    if arch == "hubert":
        return HubertConfig(**common)
    return WavLMConfig(num_buckets=32, max_bucket_distance=200, **common)


def encoder_of(model):
    """The base model inside a task model (``model.wav2vec2`` / ``.hubert`` / ``.wavlm``)."""
    for attr in ("wav2vec2", "hubert", "wavlm"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_classifier(path: str, num_labels: int | None = None, labels: list[str] | None = None):
    """Load a keyword classifier (``AutoModelForAudioClassification``) from a hub id or local
    folder, safetensors only. With ``labels`` a fresh head of that size is created when the
    checkpoint has none (a pretrained backbone)."""
    from transformers import AutoModelForAudioClassification

    kwargs: dict = {"use_safetensors": True, "dtype": torch.float32}
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={w: i for i, w in enumerate(labels)},
        )
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    return AutoModelForAudioClassification.from_pretrained(str(path), **kwargs)


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A model folder counts as done only with its config, weights and the DONE marker that is
    written last (so a killed save is never taken for a finished one)."""
    p = Path(path)
    return (
        (p / "config.json").is_file()
        and (p / "model.safetensors").is_file()
        and (p / "DONE").is_file()
    )


def pad_batch(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms to the longest and return (batch, attention_mask)."""
    n = max(w.shape[-1] for w in waves)
    batch = torch.zeros(len(waves), n, dtype=waves[0].dtype)
    mask = torch.zeros(len(waves), n, dtype=torch.long)
    for i, w in enumerate(waves):
        batch[i, : w.shape[-1]] = w
        mask[i, : w.shape[-1]] = 1
    return batch, mask


def normalize_audio(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-mean unit-variance per utterance over its valid samples (what the Wav2Vec2 feature
    extractor does with ``do_normalize=True``)."""
    if mask is None:
        mask = torch.ones_like(x)
    m = mask.to(x.dtype)
    n = m.sum(-1, keepdim=True).clamp_min(1)
    mean = (x * m).sum(-1, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + 1e-7) * m
