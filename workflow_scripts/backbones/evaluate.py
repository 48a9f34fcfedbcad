"""Evaluation of a keyword classifier: logits over clips, accuracy with a bootstrap CI and
per-class accuracy, and the autocast policy every stage uses (bf16 on CUDA, none on CPU)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import numpy as np
import torch

from workflow_scripts.backbones.registry import normalize_audio

#: Clips per forward pass when a classifier is evaluated.
EVAL_BATCH_SIZE = 128


def autocast(device: torch.device):
    """bf16 autocast on CUDA (where it pays), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def batch_logits(model, audio, device: torch.device) -> torch.Tensor:
    """float32 CPU logits (b, classes) of one batch of float32 clips (b, samples)."""
    x = normalize_audio(torch.as_tensor(audio)).to(device)
    with autocast(device):
        return model(x).logits.float().cpu()


def predict(
    model, audio: np.ndarray, device: torch.device, batch_size: int = EVAL_BATCH_SIZE
) -> np.ndarray:
    """Logits (N, classes) of a classifier on float32 clips (N, samples)."""
    model.eval()
    out = [batch_logits(model, audio[s : s + batch_size], device)
           for s in range(0, len(audio), batch_size)]  # fmt: skip
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.num_labels))


def predict_batches(
    model, batches: Iterable, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, classes), labels (N,)) of a classifier over ``batches`` of (audio, labels,
    ...) read one at a time (e.g. ``data.loader.iter_batches``): memory is one batch of audio
    plus N logits. Equals :func:`predict` on the concatenated audio with the same batches."""
    model.eval()
    logits, labels = [], []
    for audio, y, *_ in batches:
        logits.append(batch_logits(model, audio, device))
        labels.append(np.asarray(y))
    if not logits:
        return np.zeros((0, model.config.num_labels)), np.zeros(0, dtype=np.int64)
    return torch.cat(logits).numpy(), np.concatenate(labels)


def bootstrap_accuracy_ci(
    correct: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of a 0/1 vector (resampling utterances). The
    resamples are drawn 64 at a time (the same draws as all at once), so memory stays at
    64 x N indices, not n_boot x N."""
    if len(correct) == 0:
        return float("nan"), float("nan")
    rng, n = np.random.default_rng(seed), len(correct)
    means = np.concatenate([
        correct[rng.integers(0, n, size=(min(64, n_boot - s), n))].mean(1)
        for s in range(0, n_boot, 64)
    ])  # fmt: skip
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def accuracy_report(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Accuracy, its bootstrap CI and per-class accuracy (NaN for absent classes)."""
    return prediction_report(logits.argmax(1), labels, n_classes)


def prediction_report(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """:func:`accuracy_report` from the predicted classes ``pred`` (the logits' argmax)."""
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
