"""Keyword fine-tuning and evaluation of a backbone (the paper's head: projector, mean pooling
over frames, linear classifier; full fine-tuning with the CNN feature encoder frozen).

Resumable: a checkpoint (safetensors weights, optimizer state read with ``weights_only=True``,
step, RNG state) is written every ``checkpoint_every`` steps; a finished model folder gets a
``DONE`` marker last, so a killed save is never taken for a finished one.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.backbones.registry import encoder_of, normalize_audio
from workflow_scripts.core.checkpoint import resume_checkpoint, save_checkpoint
from workflow_scripts.core.provenance import config_hash


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


@torch.inference_mode()
def frozen_features(
    model, audio: np.ndarray, device: torch.device, batch_size: int = 64, progress: bool = True
):
    """The frozen CNN feature encoder's output (N, C, T) for every clip, computed once, kept in
    float16 on the CPU (half the memory; the rounding is far below what fine-tuning notices).
    Training from it equals training through the frozen CNN: the encoder has no dropout and
    its norms do not depend on train/eval mode."""
    from tqdm import tqdm

    fe = encoder_of(model).feature_extractor
    was_training = fe.training
    fe.eval()
    out = []
    for start in tqdm(
        range(0, len(audio), batch_size), desc="features", mininterval=10, disable=not progress
    ):
        x = normalize_audio(torch.from_numpy(audio[start : start + batch_size])).to(device)
        with autocast(device):
            out.append(fe(x).to(torch.float16).cpu())
    fe.train(was_training)
    return torch.cat(out)


def _identity(x):
    return x


@contextmanager
def features_as_input(model):
    """Within the block, the model takes precomputed feature-encoder outputs (N, C, T) as its
    ``input_values``: the CNN's forward is shadowed by an identity (its weights stay in the
    model, so checkpoints saved meanwhile are complete), and restored afterwards."""
    fe = encoder_of(model).feature_extractor
    fe.forward = _identity
    try:
        yield model
    finally:
        del fe.forward


def train_classifier(
    model,
    audio: np.ndarray,
    labels: np.ndarray,
    spec: dict,
    device: torch.device,
    work_dir: str | Path | None = None,
    log=print,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` in place for ``spec['steps']`` steps of random batches; resumes
    from ``work_dir/checkpoint`` if present. Returns {history, seconds, resumed_from}."""
    from tqdm import tqdm

    torch.manual_seed(spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    if spec.get("freeze_feature_encoder", True):
        model.freeze_feature_encoder()
    # SpecAugment time masking during fine-tuning (transformers' default rate unless set);
    # its masks come from numpy's global RNG, re-seeded per step below so resumes are exact.
    model.config.mask_time_prob = spec.get("mask_time_prob", 0.05)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for m in (model.projector, model.classifier) for p in m.parameters()}
    mult = spec.get("head_lr_mult", 1.0)  # the freshly initialised head may learn faster
    groups = [
        {"params": [p for p in params if id(p) not in head], "lr_mult": 1.0},
        {"params": [p for p in params if id(p) in head], "lr_mult": mult},
    ]
    opt = torch.optim.AdamW(groups, lr=spec["lr"], weight_decay=0.01)
    history: list[dict] = []
    start = 0
    ckpt = Path(work_dir) / "checkpoint" if work_dir else None
    spec_hash = config_hash(spec)
    if ckpt is not None:
        start, history = resume_checkpoint(ckpt, model, opt, rng, spec_hash, log)
    y_all = torch.from_numpy(labels)
    t0 = time.time()
    # With the CNN frozen its output never changes: compute it once and train the rest on it
    # (the CNN is most of a step's CPU cost for small models).
    cached = spec.get("freeze_feature_encoder", True) and spec.get("cache_features", True)
    if cached:
        x_all = frozen_features(model, audio, device, progress=progress)
        log(f"cached frozen CNN features {tuple(x_all.shape)} in {time.time() - t0:.1f} s")
    else:
        x_all = torch.from_numpy(audio)
    swap = features_as_input(model) if cached else nullcontext()
    steps = spec["steps"]
    bar = tqdm(range(start, steps), desc="fine-tune", disable=not progress, mininterval=10)
    bs = min(spec["batch_size"], len(x_all))
    with swap:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, spec["lr"], spec["warmup_frac"]) * g["lr_mult"]
            idx = torch.from_numpy(rng.choice(len(x_all), size=bs, replace=False))
            x = x_all[idx].float().to(device) if cached else normalize_audio(x_all[idx]).to(device)
            np.random.seed((spec["seed"] * 1_000_003 + step) % 2**32)
            with autocast(device):
                loss = model(x, labels=y_all[idx].to(device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            if step % 10 == 0 or step == steps - 1:
                history.append({"step": step, "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.3f}")
            every = spec.get("checkpoint_every", 100)
            if ckpt is not None and (step + 1) % every == 0 and step + 1 < steps:
                save_checkpoint(ckpt, model, opt, step + 1, rng, history, spec_hash)
    model.eval()
    return {"history": history, "seconds": time.time() - t0, "resumed_from": start}


def save_model(model, out_dir: str | Path, extra: dict) -> None:
    """save_pretrained (safetensors) into a temp folder, write ``extra`` files, DONE, rename."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name, content in extra.items():
        (tmp / name).write_text(content)
    (tmp / "DONE").write_text("complete\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
