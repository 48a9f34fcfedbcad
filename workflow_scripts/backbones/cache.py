"""The hidden-state cache: one forward pass per model and split, every layer stored once.

File: ``results/cache/{model}/{split}.safetensors`` with tensors
- ``hidden_states``: (L+1, N, T, D) float16 — index 0 is the input to the first transformer
  block, index i the output of block i (Hugging Face ``output_hidden_states`` order);
- ``feature_projection``: (N, T, D) float16 — the feature-projection output (the mimickers'
  input; for wav2vec2/HuBERT/WavLM it precedes the positional convolution);
- ``labels``: (N,) int64;
and the clip paths in the file's metadata. ``read_layers`` memory-maps single layers, so a
metric never loads the whole stack. Size: 2·(L+1)·N·T·D bytes, i.e. linear in models ×
utterances × layers (wav2vec2-base, 2,560 clips: 13·2560·49·768·2 B ≈ 2.5 GB).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.backbones.registry import encoder_of, normalize_audio


@torch.inference_mode()
def extract_hidden_states(
    model, audio: np.ndarray, device: torch.device, batch_size: int = 64, progress: bool = True
) -> dict[str, np.ndarray]:
    """Run ``model`` once over ``audio`` (N, samples); return float16 arrays
    ``hidden_states`` (L+1, N, T, D) and ``feature_projection`` (N, T, D)."""
    from tqdm import tqdm

    model.eval().to(device)
    base = encoder_of(model)
    captured: list[torch.Tensor] = []

    def hook(_module, _inp, out):
        captured.append((out[0] if isinstance(out, tuple) else out).detach())

    handle = base.feature_projection.register_forward_hook(hook)
    hs = fp = None
    try:
        starts = range(0, len(audio), batch_size)
        for start in tqdm(starts, desc="extracting", disable=not progress, mininterval=10):
            x = normalize_audio(torch.from_numpy(audio[start : start + batch_size])).to(device)
            captured.clear()
            with autocast(device):
                out = base(x, output_hidden_states=True)
            layers = torch.stack(out.hidden_states).to(torch.float16).cpu().numpy()
            if hs is None:
                n_layers, _, t, d = layers.shape
                hs = np.zeros((n_layers, len(audio), t, d), dtype=np.float16)
                fp = np.zeros((len(audio), t, d), dtype=np.float16)
            hs[:, start : start + len(x)] = layers
            fp[start : start + len(x)] = captured[0].to(torch.float16).cpu().numpy()
    finally:
        handle.remove()
    return {"hidden_states": hs, "feature_projection": fp}


def write_cache(path: str | os.PathLike, arrays: dict, labels: np.ndarray, paths: list[str],
                meta: dict | None = None) -> None:  # fmt: skip
    """Atomically write a cache file (see the module docstring for its layout)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    tensors["labels"] = np.ascontiguousarray(labels.astype(np.int64))
    md = {"paths": json.dumps(paths), **{k: str(v) for k, v in (meta or {}).items()}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=md)
    os.replace(tmp, path)


def cache_info(path: str | os.PathLike) -> dict:
    """Shapes and metadata of a cache without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        md = f.metadata() or {}
    return {"shapes": shapes, "metadata": md}


def read_layers(path: str | os.PathLike, layers: list[int] | None = None,
                limit: int | None = None) -> np.ndarray:  # fmt: skip
    """Hidden states (len(layers), N, T, D) float16 of the chosen layers (all by default),
    optionally only the first ``limit`` utterances; reads only those slices."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        sl = f.get_slice("hidden_states")
        n_layers, n = sl.get_shape()[:2]
        layers = list(range(n_layers)) if layers is None else layers
        stop = n if limit is None else min(limit, n)
        return np.stack([sl[i : i + 1, :stop][0] for i in layers])


def read_array(path: str | os.PathLike, key: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return f.get_tensor(key)
