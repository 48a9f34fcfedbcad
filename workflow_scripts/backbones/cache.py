"""Hidden-state extraction: one forward pass of a fine-tuned model over a split, streamed into
the cache file (:mod:`workflow_scripts.backbones.cachefile`) batch by batch, so that memory
is one batch's states whatever the number of clips.

States use the ``output_hidden_states`` indices (0 = the input of the first transformer
block, i = the output of block i). For pre-LN ("stable layer norm") models state L precedes
the encoder's final LayerNorm; the normalised output, which the classifier head reads, is
stored as ``final``. The feature projection (the mimickers' input) precedes the positional
convolution.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import torch

from workflow_scripts.backbones.cachefile import CacheWriter
from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.backbones.registry import encoder_of, normalize_audio


def final_differs(model) -> bool:
    """Whether the encoder's output is not its last hidden state (pre-LN models)."""
    return bool(getattr(model.config, "do_stable_layer_norm", False))


class StateExtractor:
    """Forward passes that return every state of a batch: float16 ``hidden_states``
    (L+1, b, T, D), ``feature_projection`` and ``final`` (the encoder's output) (b, T, D).
    A context manager: the feature-projection hook is removed on exit."""

    def __init__(self, model, device: torch.device):
        self.device = device
        self.base = encoder_of(model.eval().to(device))
        self.captured: list[torch.Tensor] = []
        self.handle = self.base.feature_projection.register_forward_hook(self._hook)

    def _hook(self, _module, _inp, out):
        self.captured.append((out[0] if isinstance(out, tuple) else out).detach())

    @torch.inference_mode()
    def __call__(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        x = normalize_audio(torch.from_numpy(audio)).to(self.device)
        self.captured.clear()
        with autocast(self.device):
            out = self.base(x, output_hidden_states=True)
        return {
            "hidden_states": torch.stack(out.hidden_states).to(torch.float16).cpu().numpy(),
            "feature_projection": self.captured[0].to(torch.float16).cpu().numpy(),
            "final": out.last_hidden_state.to(torch.float16).cpu().numpy(),
        }

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def extract_hidden_states(model, audio: np.ndarray, device: torch.device, batch_size: int = 64,
                          progress: bool = True) -> dict[str, np.ndarray]:  # fmt: skip
    """In memory, for small sets (tests, benchmarks): ``hidden_states`` (L+1, N, T, D),
    ``feature_projection`` and ``final`` (N, T, D), float16."""
    from tqdm import tqdm

    starts = tqdm(range(0, len(audio), batch_size), desc="extracting", disable=not progress)
    with StateExtractor(model, device) as extract:
        parts = [extract(audio[s : s + batch_size]) for s in starts]
    return {
        "hidden_states": np.concatenate([p["hidden_states"] for p in parts], axis=1),
        "feature_projection": np.concatenate([p["feature_projection"] for p in parts]),
        "final": np.concatenate([p["final"] for p in parts]),
    }


def extract_to_cache(model, batches: Iterable[tuple[np.ndarray, np.ndarray, list[str]]],
                     paths: list[str], out, states: list[int], feature_projection: bool,
                     meta: dict, device: torch.device, progress: bool = True) -> dict:  # fmt: skip
    """Stream ``batches`` of (audio, labels, clip paths) of the clips ``paths`` through the
    model into the cache file ``out``, storing the hidden ``states`` (indices), the feature
    projection when asked, and ``final`` when it differs from state L. The file is created
    after the first batch (its frame count) and renamed into place at the end."""
    from tqdm import tqdm

    n, L = len(paths), int(model.config.num_hidden_layers)
    bad = [s for s in states if not 0 <= s <= L]
    if bad:
        raise ValueError(f"states {bad} out of range 0..{L}")
    keep_final = final_differs(model)
    writer, start = None, 0
    bar = tqdm(total=n, desc="extracting", disable=not progress, mininterval=10)
    extract = StateExtractor(model, device)
    try:
        for audio, labels, clip_paths in batches:
            if list(clip_paths) != paths[start : start + len(clip_paths)]:
                raise ValueError("batches do not follow the cache's clip list")
            arrays = extract(audio)
            if writer is None:
                t, d = arrays["feature_projection"].shape[1:]
                tensors = {"labels": (np.int64, (n,))}
                if feature_projection:
                    tensors["feature_projection"] = (np.float16, (n, t, d))
                if keep_final:
                    tensors["final"] = (np.float16, (n, t, d))
                tensors["hidden_states"] = (np.float16, (len(states), n, t, d))
                md = {**meta, "paths": json.dumps(paths), "states": json.dumps(states),
                      "n_layers": L, "final_stored": str(keep_final).lower()}  # fmt: skip
                writer = CacheWriter(out, tensors, md)
            writer.write("labels", start, labels)
            if feature_projection:
                writer.write("feature_projection", start, arrays["feature_projection"])
            if keep_final:
                writer.write("final", start, arrays["final"])
            for pos, s in enumerate(states):
                writer.write("hidden_states", start, arrays["hidden_states"][s], state=pos)
            start += len(audio)
            bar.update(len(audio))
        if writer is None or start != n:
            raise ValueError(f"got {start} clips for a cache of {n}")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        extract.handle.remove()
    writer.close()
    return {"clips": n, "states": states, "final_stored": keep_final,
            "feature_projection": feature_projection}  # fmt: skip
