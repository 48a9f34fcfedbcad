"""Cluster resources that scale with the model: a parameter-count estimate from a model's
config entry, and memory / run time requests derived from it, growing with the retry attempt.

Used by the rules' ``resources:`` (rules/common.smk wraps these functions); pure so that the
SLURM requests can be unit-tested without a cluster.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

BASE_PARAMS = 95_000_000  # wav2vec2-base: the unit of the run-time scaling

# The paper's hub checkpoints: their architectures (transformers config keys), written once in
# config/architectures.yaml (read here without torch; workflow_scripts/backbones/architectures
# builds random-weight models from the same entries).
ARCHITECTURES_FILE = Path(__file__).resolve().parents[2] / "config" / "architectures.yaml"
# Other hub ids of the same sizes (the estimate of the entry they name).
SAME_SIZE_AS = {
    "facebook/wav2vec2-base-960h": "facebook/wav2vec2-base",
    "facebook/wav2vec2-large-lv60": "facebook/wav2vec2-large",
    "facebook/hubert-large-ll60k": "facebook/wav2vec2-large",
    "microsoft/wavlm-base-plus": "microsoft/wavlm-base",
}


@functools.cache
def hub_architectures(path: str | Path = ARCHITECTURES_FILE) -> dict[str, dict]:
    """hub id -> {"name": short name, "config": transformers config keys}, from
    config/architectures.yaml (keys starting with ``_`` are YAML anchors, not models; ``decoders``
    is the LLM decoders' section, :func:`decoder_architectures`)."""
    import yaml

    entries = yaml.safe_load(Path(path).read_text())
    return {hub: entry for hub, entry in entries.items()
            if not hub.startswith("_") and hub != "decoders"}  # fmt: skip


def decoder_architectures(path: str | Path = ARCHITECTURES_FILE) -> dict[str, dict]:
    """hub id -> {"name", "config" (the public config.json's architecture keys), "tokenizer"
    (the offline stand-in's special tokens)} of the LLM decoders, from the ``decoders`` section
    of config/architectures.yaml (workflow_scripts/speechllm/real_decoders.py writes them)."""
    import yaml

    return dict(yaml.safe_load(Path(path).read_text()).get("decoders") or {})


def config_params(cfg: dict, conv: dict | None = None) -> int:
    """:func:`transformer_params` of a config in transformers' keys (a ``config.json``);
    missing keys take a base model's values and ``conv``'s front end."""
    conv = conv or REAL_CONV
    hidden = cfg.get("hidden_size") or 768
    return transformer_params(
        cfg.get("num_hidden_layers") or 12, hidden, cfg.get("intermediate_size") or 4 * hidden,
        cfg.get("conv_dim", conv["conv_dim"]), cfg.get("conv_kernel", conv["conv_kernel"]),
    )  # fmt: skip


def known_params() -> dict[str, int]:
    """Estimated parameter counts of the hub ids whose architecture the project knows."""
    known = {hub: config_params(e["config"]) for hub, e in hub_architectures().items()}
    known.update({alias: known[hub] for alias, hub in SAME_SIZE_AS.items() if hub in known})
    return known


# Real front end (wav2vec2 / HuBERT / WavLM): 7 conv layers of 512 channels.
REAL_CONV = {"conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2]}
# The small backbones' default front end (``backbones.small_config`` reads it from here, so
# the estimate and the built model cannot drift apart; this module stays free of torch).
SMALL_CONV = {"conv_dim": (64, 128, 128), "conv_kernel": (10, 8, 8), "conv_stride": (5, 8, 8)}


def transformer_params(layers: int, hidden: int, ffn: int, conv_dim=(), conv_kernel=()) -> int:
    """Parameters of a wav2vec2-style model: conv front end, feature projection, positional
    convolution (kernel 128, 16 groups) and ``layers`` blocks of attention + feed-forward."""
    conv, c_in = 0, 1
    for c_out, k in zip(conv_dim, conv_kernel, strict=False):
        conv += c_in * c_out * k
        c_in = c_out
    projection = c_in * hidden + hidden
    positional = hidden * (hidden // 16) * 128 + hidden
    block = 4 * hidden * hidden + 4 * hidden + 2 * hidden * ffn + hidden + ffn + 4 * hidden
    return int(conv + projection + positional + layers * block)


def estimate_params(spec: dict) -> int:
    """Parameter count of a model registry entry (``pretrain`` spec, local folder with a
    ``config.json``, or hub id). Hub ids of config/architectures.yaml (and same-sized aliases)
    are computed from their architecture; other hub ids fall back on their name:
    ``large``/``xl`` → a large model, anything else → a base model."""
    from workflow_scripts.core.config import model_config

    hf = str(spec.get("hf", ""))
    known = known_params()
    if "pretrain" not in spec and hf in known:
        return known[hf]
    cfg = model_config(spec)
    if cfg is not None:
        return config_params(cfg, SMALL_CONV if "pretrain" in spec else REAL_CONV)
    if re.search(r"large|xl", hf, re.I):
        return known["facebook/wav2vec2-large"]
    return BASE_PARAMS


def mem_mb(params: int, base_mb: int, mb_per_mparam: float, attempt: int = 1,
           override: int | None = None) -> int:  # fmt: skip
    """Host memory of a job: ``base_mb`` + ``mb_per_mparam`` per million parameters (or the
    model's own ``override``), times the attempt number (a job that ran out of memory asks
    for twice as much on its first retry)."""
    base = override if override else base_mb + mb_per_mparam * params / 1e6
    return int(math.ceil(base * max(1, attempt)))


def runtime_min(params: int, base_min: int, attempt: int = 1, override: int | None = None) -> int:
    """Wall-time request in minutes: ``base_min`` for a base-sized model (no less for smaller
    ones), proportional to the parameter count above that, times the attempt number."""
    base = override if override else base_min * max(1.0, params / BASE_PARAMS)
    return int(math.ceil(base * max(1, attempt)))
