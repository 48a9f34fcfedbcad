"""Cluster resources that scale with the model: a parameter-count estimate from a model's
config entry, and memory / run time requests derived from it, growing with the retry attempt.

Used by the rules' ``resources:`` (rules/common.smk wraps these functions); pure so that the
SLURM requests can be unit-tested without a cluster.
"""

from __future__ import annotations

import math
import re

BASE_PARAMS = 95_000_000  # wav2vec2-base: the unit of the run-time scaling

# Parameter counts of the hub checkpoints the paper grid uses (transformers' counts, rounded).
KNOWN_PARAMS = {
    "facebook/wav2vec2-base": 95_000_000,
    "facebook/wav2vec2-base-960h": 95_000_000,
    "facebook/wav2vec2-large": 317_000_000,
    "facebook/wav2vec2-large-lv60": 317_000_000,
    "facebook/hubert-base-ls960": 94_700_000,
    "facebook/hubert-large-ll60k": 316_600_000,
    "microsoft/wavlm-base": 94_700_000,
    "microsoft/wavlm-base-plus": 94_700_000,
    "microsoft/wavlm-large": 316_600_000,
}
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
    ``config.json``, or hub id). Unknown hub ids fall back on their name: ``large``/``xl``
    → a large model, anything else → a base model."""
    from workflow_scripts.core.config import model_config

    hf = str(spec.get("hf", ""))
    if "pretrain" not in spec and hf in KNOWN_PARAMS:
        return KNOWN_PARAMS[hf]
    cfg = model_config(spec)
    if cfg is not None:
        small = "pretrain" in spec
        conv = SMALL_CONV if small else REAL_CONV
        hidden = cfg.get("hidden_size") or 768
        return transformer_params(
            cfg.get("num_hidden_layers") or 12, hidden, cfg.get("intermediate_size") or 4 * hidden,
            cfg.get("conv_dim", conv["conv_dim"]), cfg.get("conv_kernel", conv["conv_kernel"]),
        )  # fmt: skip
    if re.search(r"large|xl", hf, re.I):
        return KNOWN_PARAMS["facebook/wav2vec2-large"]
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
