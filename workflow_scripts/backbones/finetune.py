"""Keyword fine-tuning and evaluation of a backbone (the paper's head: projector, mean pooling
over frames, linear classifier; full fine-tuning with the CNN feature encoder frozen).

Resumable: a checkpoint (safetensors weights, optimizer state read with ``weights_only=True``,
step, RNG state) is written every ``checkpoint_every`` steps; a finished model folder gets a
``DONE`` marker last, so a killed save is never taken for a finished one.

Bounded memory: the training clips are a
:class:`~workflow_scripts.backbones.clips.ClipSet` (audio files read when a batch asks
for them, or a small in-memory array); each step's random batch is read through a
``torch.utils.data.DataLoader`` (``finetune.workers`` processes decode ahead) whose batch
sampler (:class:`DrawnBatches`) replays the training loop's own seeded draws. With
``cache_features`` the frozen CNN's output is computed once per clip and written to a file in
the job's work folder (:func:`frozen_features`), of which each step reads its rows.
"""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
import tempfile
import time
from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.backbones.cachefile import CacheFile, CacheWriter
from workflow_scripts.backbones.clips import ClipSet, as_clips
from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.backbones.registry import encoder_of, normalize_audio
from workflow_scripts.core.checkpoint import resume_checkpoint, save_checkpoint
from workflow_scripts.core.files import apply_umask
from workflow_scripts.core.provenance import config_hash

#: The frozen CNN's features of the training clips, in the fine-tuning job's work folder.
FEATURES_FILE = "frozen_features.safetensors"
#: Settings that change how fast, not what, fine-tuning computes (kept out of the checkpoint's
#: settings hash, so changing them resumes a checkpoint).
SPEED_KEYS = ("workers",)


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


# ----------------------------------------------------------------------------------------
# The loader of a training loop's random batches (of a ClipSet: backbones.clips)
# ----------------------------------------------------------------------------------------
class DrawnBatches:
    """Batch sampler: ``steps`` index arrays ``rng.choice(n, size=batch_size, replace=False)``
    drawn from a copy of ``rng`` as it is now, i.e. exactly the batches of a loop that makes
    the same draws from ``rng`` itself (that loop's RNG, which checkpoints save, is untouched
    by the loader's read-ahead)."""

    def __init__(self, rng: np.random.Generator, n: int, batch_size: int, steps: int):
        self.rng, self.n, self.batch_size, self.steps = copy.deepcopy(rng), n, batch_size, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        rng = copy.deepcopy(self.rng)
        for _ in range(self.steps):
            yield rng.choice(self.n, size=self.batch_size, replace=False)


def _unchanged(batch):
    return batch


def clip_loader(clips: ClipSet, batches: Iterable, workers: int = 0):
    """A DataLoader yielding (audio, labels, indices) numpy batches of ``clips`` for the index
    arrays ``batches``, in order; ``workers`` processes read ahead (none for in-memory
    clips). It has its own torch generator, so iterating it never draws from torch's global
    RNG (dropout masks stay what they are without a loader)."""
    from torch.utils.data import DataLoader

    workers = 0 if clips.in_memory else int(workers)
    return DataLoader(clips, batch_sampler=batches, num_workers=workers, collate_fn=_unchanged,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip


# ----------------------------------------------------------------------------------------
# The frozen CNN's features, once per clip, on disk
# ----------------------------------------------------------------------------------------
def _features_key(fe, clips: ClipSet, device: torch.device, batch_size: int) -> str:
    """What the features file depends on: the clips, the CNN's weights, device and batch."""
    h = hashlib.sha256(f"{clips.identity}\n{device.type}\n{batch_size}\n".encode())
    for name, t in fe.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def frozen_features(model, clips: ClipSet, device: torch.device, path: str | Path,
                    batch_size: int = 64, workers: int = 0, progress: bool = True,
                    log=print) -> CacheFile:  # fmt: skip
    """The frozen CNN feature encoder's output (N, C, T) of every clip, computed once in
    batches of ``batch_size`` consecutive clips and written in float16 (the rounding is far
    below what fine-tuning notices) as tensor ``features`` of the cache file ``path``
    (:mod:`.cachefile`; renamed into place when complete). A complete file made from the same
    clips, CNN weights, device and batch size is reused (a resumed job). Training from it
    equals training through the frozen CNN: the encoder has no dropout and its norms do not
    depend on train/eval mode."""
    from tqdm import tqdm

    path = Path(path)
    fe = encoder_of(model).feature_extractor
    key = _features_key(fe, clips, device, batch_size)
    if path.is_file() and CacheFile(path).metadata.get("key") == key:
        log(f"reusing the frozen CNN features in {path}")
        return CacheFile(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed job
        stale.unlink()
    n, was_training, writer = len(clips), fe.training, None
    fe.eval()
    batches = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    loader = clip_loader(clips, batches, workers)
    try:
        for audio, _, idx in tqdm(loader, desc="features", mininterval=10, disable=not progress):
            x = normalize_audio(torch.from_numpy(audio)).to(device)
            with autocast(device):
                f = fe(x).to(torch.float16).cpu().numpy()
            if writer is None:
                tensors = {"labels": (np.int64, (n,)), "features": (np.float16, (n, *f.shape[1:]))}
                writer = CacheWriter(path, tensors, {"key": key})
            writer.write("features", int(idx[0]), f)
        writer.write("labels", 0, clips.labels)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        fe.train(was_training)
    writer.close()
    return CacheFile(path)


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


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------
def _optimizer(model, spec: dict):
    """AdamW over the trainable parameters, the head's group at ``head_lr_mult`` x the rate;
    returns (optimizer, parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for m in (model.projector, model.classifier) for p in m.parameters()}
    mult = spec.get("head_lr_mult", 1.0)  # the freshly initialised head may learn faster
    groups = [
        {"params": [p for p in params if id(p) not in head], "lr_mult": 1.0},
        {"params": [p for p in params if id(p) in head], "lr_mult": mult},
    ]
    return torch.optim.AdamW(groups, lr=spec["lr"], weight_decay=0.01), params


def _inputs(clips: ClipSet, features: CacheFile | None, rng, bs: int, steps: int, workers: int):
    """Per step, the model's input batch (float32 features or raw audio, CPU) and the drawn
    indices: the loop's draw ``rng.choice(N, size=bs, replace=False)``; the audio comes from
    a loader replaying the same draws (checked)."""
    n = len(clips)
    if features is not None:
        for _ in range(steps):
            idx = rng.choice(n, size=bs, replace=False)
            yield torch.from_numpy(features.read("features", idx)).float(), idx
        return
    for audio, _, got in clip_loader(clips, DrawnBatches(rng, n, bs, steps), workers):
        idx = rng.choice(n, size=bs, replace=False)
        if not np.array_equal(idx, got):
            raise RuntimeError("the loader's batch is not the drawn batch")
        yield torch.from_numpy(audio), idx


def accumulate(model, x: torch.Tensor, y: torch.Tensor, parts: int, device) -> torch.Tensor:
    """Forward and backward passes of the batch ``(x, y)`` in ``parts`` consecutive
    micro-batches, each loss weighted by its share of the batch, so that the summed gradients
    are those of the batch's mean loss; returns that mean loss (detached). Peak memory is one
    micro-batch's."""
    total, loss = x.shape[0], None
    for xs, ys in zip(torch.tensor_split(x, parts), torch.tensor_split(y, parts), strict=True):
        if len(ys) == 0:
            continue
        with autocast(device):
            part = model(xs, labels=ys).loss * (len(ys) / total)
        part.backward()
        loss = part.detach() if loss is None else loss + part.detach()
    return loss


def train_classifier(
    model,
    audio,
    labels: np.ndarray | None,
    spec: dict,
    device: torch.device,
    work_dir: str | Path | None = None,
    log=print,
    progress: bool = True,
    resume_key: str = "",
) -> dict:
    """Fine-tune ``model`` in place for ``spec['steps']`` steps of random batches of the
    training clips ``audio`` (a :class:`ClipSet`, ``labels`` None; or an in-memory float32
    array with its ``labels``); resumes from ``work_dir/checkpoint`` if present and made with
    the same settings and ``resume_key`` (the digests of the backbone and the data: a
    checkpoint of other weights or clips is discarded, never resumed). The frozen CNN's
    features (``cache_features``) go to ``work_dir`` (a temporary folder without one).
    Returns {history, seconds, resumed_from}."""
    with nullcontext(work_dir) if work_dir else tempfile.TemporaryDirectory() as work:
        return _train(model, as_clips(audio, labels), spec, device, Path(work),
                      work_dir is not None, log, progress, resume_key)  # fmt: skip


def _train(model, clips: ClipSet, spec: dict, device, work: Path, resumable: bool, log,
           progress: bool, resume_key: str = "") -> dict:  # fmt: skip
    from tqdm import tqdm

    torch.manual_seed(spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    if spec.get("freeze_feature_encoder", True):
        model.freeze_feature_encoder()
    # SpecAugment time masking during fine-tuning (transformers' default rate unless set);
    # its masks come from numpy's global RNG, re-seeded per step below so resumes are exact.
    model.config.mask_time_prob = spec.get("mask_time_prob", 0.05)
    model.to(device).train()
    opt, params = _optimizer(model, spec)
    history: list[dict] = []
    start = 0
    ckpt = work / "checkpoint" if resumable else None
    spec_hash = config_hash(
        {"spec": {k: v for k, v in spec.items() if k not in SPEED_KEYS}, "inputs": resume_key}
    )
    if ckpt is not None:
        start, history = resume_checkpoint(ckpt, model, opt, rng, spec_hash, log)
    t0 = time.time()
    # With the CNN frozen its output never changes: compute it once and train the rest on it
    # (the CNN is most of a step's CPU cost for small models).
    cached = spec.get("freeze_feature_encoder", True) and spec.get("cache_features", True)
    workers = spec.get("workers", 0)
    features = None
    if cached:
        features = frozen_features(model, clips, device, work / FEATURES_FILE, workers=workers,
                                   progress=progress, log=log)  # fmt: skip
        log(f"frozen CNN features {features.shapes['features']} in {time.time() - t0:.1f} s")
    swap = features_as_input(model) if cached else nullcontext()
    steps = spec["steps"]
    bar = tqdm(range(start, steps), desc="fine-tune", disable=not progress, mininterval=10)
    # gradient accumulation: a step's batch (batch_size x accumulation clips, drawn at once)
    # runs as `accumulation` micro-batches of batch_size, their gradients summed
    accumulation = int(spec.get("accumulation", 1))
    bs = min(spec["batch_size"] * accumulation, len(clips))
    batches = _inputs(clips, features, rng, bs, steps - start, workers)
    with swap:
        for step, (x, idx) in zip(bar, batches, strict=True):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, spec["lr"], spec["warmup_frac"]) * g["lr_mult"]
            x = x.to(device) if cached else normalize_audio(x).to(device)
            y = torch.from_numpy(clips.labels[idx]).to(device)
            np.random.seed((spec["seed"] * 1_000_003 + step) % 2**32)
            if accumulation == 1:  # one micro-batch: the step as it always was
                with autocast(device):
                    loss = model(x, labels=y).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
            else:
                opt.zero_grad(set_to_none=True)
                loss = accumulate(model, x, y, accumulation, device)
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


def release_features(work_dir: str | Path | None) -> None:
    """Delete the frozen-CNN features file of a fine-tuning job (once its model is saved)."""
    if work_dir:
        (Path(work_dir) / FEATURES_FILE).unlink(missing_ok=True)


def save_model(model, out_dir: str | Path, extra: dict) -> None:
    """save_pretrained (safetensors) into a temp folder, write ``extra`` files, DONE, give it
    the umask's permissions, rename."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name, content in extra.items():
        (tmp / name).write_text(content)
    (tmp / "DONE").write_text("complete\n")
    apply_umask(tmp)  # safetensors writes 0600: give the folder the umask's permissions
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
