"""Sizes known before a run: clips per split, a model's depth / width / frames, and the bytes
of the outputs that dominate disk (hidden-state caches, model folders).

The rules' ``disk_mb`` and ``mem_mb`` requests and ``make plan``'s table are computed from
these functions, so the plan a user reads is what the scheduler is asked for. Torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path

MB = 1_000_000
# Speech Commands v0.02, the 35 words (no _silence_): clips per split of the official lists.
SPEECH_COMMANDS_CLIPS = {"training": 84_843, "validation": 9_981, "testing": 11_005}
CLIP_SAMPLES = 16_000


def split_clips(config: dict, split: str, manifest: str | Path | None = None) -> int:
    """Usable clips of ``split``: counted in the manifest when it exists, else the official
    Speech Commands v0.02 counts (``data.root`` set; scaled by the share of the 35 words) or
    the synthetic corpus's expected count (sessions x words x repeats x the split's share)."""
    if manifest is not None and Path(manifest).is_file():
        import pyarrow.parquet as pq

        t = pq.read_table(manifest, columns=["split", "usable"]).to_pandas()
        return int(((t.split == split) & t.usable).sum())
    words = config.get("corpus", {}).get("words")
    if config.get("data", {}).get("root"):
        share = len(words) / 35 if words else 1.0
        return int(round(SPEECH_COMMANDS_CLIPS[split] * share))
    c = config["corpus"]
    n_words = len(words) if words else 35
    pct = {"validation": c["validation_percentage"], "testing": c["testing_percentage"]}
    share = pct.get(split, 100 - c["validation_percentage"] - c["testing_percentage"]) / 100
    return int(round(c["speakers"] * n_words * c.get("repeats", 1) * share))


def limited(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, int(limit))


def conv_frames(conv_kernel, conv_stride, samples: int = CLIP_SAMPLES) -> int:
    """Frames the convolutional front end makes of ``samples`` samples."""
    t = samples
    for k, s in zip(conv_kernel, conv_stride, strict=True):
        t = (t - k) // s + 1
    return int(t)


def model_dims(spec: dict) -> dict:
    """{layers, hidden, frames, params} of a model registry entry, from its architecture as
    far as it can be known without loading it (config.json, pretrain spec, the hub
    architectures table, else a base-sized wav2vec2)."""
    from workflow_scripts.core import resources
    from workflow_scripts.core.config import model_config

    cfg = model_config(spec) or {}
    if not cfg and "hf" in spec:
        arch = resources.hub_architectures().get(str(spec["hf"]))
        cfg = dict(arch["config"]) if arch else {}
    small = "pretrain" in spec
    conv = resources.SMALL_CONV if small else resources.REAL_CONV
    kernel = cfg.get("conv_kernel") or conv["conv_kernel"]
    stride = cfg.get("conv_stride") or conv.get("conv_stride", (5, 2, 2, 2, 2, 2, 2))
    return {
        "layers": int(cfg.get("num_hidden_layers") or 12),
        "hidden": int(cfg.get("hidden_size") or 768),
        "frames": conv_frames(kernel, stride),
        "params": resources.estimate_params(spec),
    }


def cache_bytes(clips: int, frames: int, hidden: int, states: int, feature_projection: bool,
                final: bool) -> int:  # fmt: skip
    """Bytes of a cache file: float16 rows of ``frames x hidden`` per stored state (and the
    feature projection / the pre-LN ``final`` output), int64 labels, the header (paths)."""
    per_row = 2 * frames * hidden
    n_tensors = states + int(feature_projection) + int(final)
    return clips * (per_row * n_tensors + 8) + 40 * clips + 1500  # + header: paths, provenance


def model_bytes(params: int, dtype_bytes: int = 4) -> int:
    """A ``save_pretrained`` folder of ``params`` parameters (safetensors, float32)."""
    return params * dtype_bytes + 100_000


def mb(n_bytes: float) -> int:
    return int(math.ceil(n_bytes / MB))
