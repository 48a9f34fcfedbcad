"""Evaluation of a keyword classifier: logits over clips, accuracy with a bootstrap CI and
per-class accuracy, and the autocast policy every stage uses (bf16 on CUDA, none on CPU)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from workflow_scripts.backbones.registry import normalize_audio


def autocast(device: torch.device):
    """bf16 autocast on CUDA (where it pays), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def predict(model, audio: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Logits (N, classes) of a classifier on float32 clips (N, samples)."""
    model.eval()
    out = []
    for start in range(0, len(audio), batch_size):
        x = normalize_audio(torch.from_numpy(audio[start : start + batch_size])).to(device)
        with autocast(device):
            out.append(model(x).logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.num_labels))


def bootstrap_accuracy_ci(
    correct: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of a 0/1 vector (resampling utterances)."""
    if len(correct) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(n_boot, len(correct)))
    means = correct[idx].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def accuracy_report(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Accuracy, its bootstrap CI and per-class accuracy (NaN for absent classes)."""
    pred = logits.argmax(1)
    correct = (pred == labels).astype(np.float64)
    lo, hi = bootstrap_accuracy_ci(correct)
    per_class = [
        float(correct[labels == c].mean()) if (labels == c).any() else float("nan")
        for c in range(n_classes)
    ]
    return {
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "ci_lo": lo,
        "ci_hi": hi,
        "n": len(correct),
        "per_class_accuracy": per_class,
    }
