"""Self-supervised pretraining of small wav2vec2 / HuBERT / WavLM backbones on the corpus.

- wav2vec2: the contrastive objective of ``Wav2Vec2ForPreTraining`` (masked frames, quantised
  targets, sampled negatives, codebook diversity loss), loss averaged over masked frames.
- HuBERT: masked prediction of k-means cluster ids of MFCC(+Δ+ΔΔ) frames, cross-entropy on the
  masked frames (first-iteration HuBERT targets).
- WavLM: the same masked prediction plus WavLM's utterance mixing (a segment of another
  utterance of the batch added at a random energy ratio; the targets stay the primary's).

Training is resumable: a checkpoint (safetensors weights, optimizer state loaded with
``weights_only=True``, step, RNG state) is written every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.backbones.finetune import lr_at
from workflow_scripts.backbones.registry import small_config
from workflow_scripts.core.checkpoint import resume_checkpoint, save_checkpoint
from workflow_scripts.core.files import apply_umask
from workflow_scripts.core.provenance import config_hash

FRAME_HOP = 320  # samples per frame of every backbone (and of the MFCC targets)


def mfcc_features(audio: torch.Tensor) -> torch.Tensor:
    """(N, samples) -> (N, frames, 39): 13 MFCCs with Δ and ΔΔ, one frame per 320 samples,
    frame count matching the backbones' (window 400, no centring)."""
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    mfcc = T.MFCC(
        sample_rate=16000,
        n_mfcc=13,
        melkwargs={"n_fft": 400, "win_length": 400, "hop_length": FRAME_HOP, "n_mels": 40,
                   "center": False},
    )  # fmt: skip
    out = []
    with torch.inference_mode():
        for chunk in torch.split(audio, 512):
            m = mfcc(chunk)  # (n, 13, frames)
            d1 = AF.compute_deltas(m)
            d2 = AF.compute_deltas(d1)
            out.append(torch.cat([m, d1, d2], dim=1).transpose(1, 2))
    return torch.cat(out)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Plain k-means with k-means++ initialisation; returns the (k, dim) centroids."""
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    centroids = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        idx = torch.multinomial(d2 / d2.sum(), 1, generator=g)
        centroids.append(x[idx].squeeze(0))
        d2 = torch.minimum(d2, ((x - centroids[-1]) ** 2).sum(1))
    c = torch.stack(centroids)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c.float()


def cluster_targets(audio: torch.Tensor, k: int, seed: int = 0, fit_frames: int = 50_000):
    """k-means ids of MFCC frames for every clip: (N, frames) int64, plus the centroids and
    the feature mean/std used to standardise."""
    feats = mfcc_features(audio)
    flat = feats.reshape(-1, feats.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-5
    flat = (flat - mean) / std
    g = torch.Generator().manual_seed(seed)
    sub = flat[torch.randperm(len(flat), generator=g)[:fit_frames]]
    centroids = kmeans(sub, k, seed=seed)
    ids = torch.cat([torch.cdist(c, centroids).argmin(1) for c in torch.split(flat, 65536)])
    return ids.reshape(feats.shape[:2]), centroids, (mean, std)


def mask_indices(batch: int, frames: int, prob: float, length: int, rng: np.random.Generator):
    """Span masking as in wav2vec2/HuBERT: about ``prob`` of frames start a span of ``length``
    frames; at least two spans per utterance. Returns a bool array (batch, frames)."""
    mask = np.zeros((batch, frames), dtype=bool)
    n_spans = max(2, int(round(prob * frames / length)))
    for b in range(batch):
        starts = rng.choice(max(1, frames - length + 1), size=n_spans, replace=False)
        for s in starts:
            mask[b, s : s + length] = True
    return mask


def sample_negatives(mask: np.ndarray, num_negatives: int, rng: np.random.Generator):
    """For every frame, ``num_negatives`` other masked frames of the same utterance (indices
    into the flattened batch), as ``Wav2Vec2ForPreTraining`` expects."""
    batch, frames = mask.shape
    out = np.zeros((batch, frames, num_negatives), dtype=np.int64)
    for b in range(batch):
        pos = np.flatnonzero(mask[b])
        for t in range(frames):
            pool = pos[pos != t] if len(pos) > 1 else np.arange(frames)[np.arange(frames) != t]
            out[b, t] = rng.choice(pool, size=num_negatives, replace=len(pool) < num_negatives)
        out[b] += b * frames
    return out


class MaskedPredictionModel(torch.nn.Module):
    """A HuBERT/WavLM base model plus a linear head over k cluster ids."""

    def __init__(self, base: torch.nn.Module, hidden: int, k: int) -> None:
        super().__init__()
        self.base = base
        self.head = torch.nn.Linear(hidden, k)

    def forward(self, audio, mask, targets):
        h = self.base(audio, mask_time_indices=mask).last_hidden_state
        logits = self.head(h[mask])
        return torch.nn.functional.cross_entropy(logits, targets[mask])


def build_pretraining_model(arch: str, spec: dict):
    """(trainable model, base model to save) for ``arch``."""
    from transformers import HubertModel, Wav2Vec2ForPreTraining, WavLMModel

    cfg = small_config(arch, spec)
    if arch == "wav2vec2":
        model = Wav2Vec2ForPreTraining(cfg)
        return model, model.wav2vec2
    base = HubertModel(cfg) if arch == "hubert" else WavLMModel(cfg)
    model = MaskedPredictionModel(base, cfg.hidden_size, spec.get("clusters", 50))
    return model, base


def mix_utterances(audio: torch.Tensor, rng: np.random.Generator, prob: float = 0.2):
    """WavLM's utterance mixing: for a fraction of the batch, add a random segment (at most half
    the clip) of another utterance at an energy ratio drawn from [-5, 5] dB."""
    out = audio.clone()
    n, length = audio.shape
    for i in np.flatnonzero(rng.random(n) < prob):
        j = int(rng.integers(n - 1))
        j += j >= i
        seg = int(rng.integers(length // 10, length // 2))
        s_src, s_dst = int(rng.integers(length - seg)), int(rng.integers(length - seg))
        src = audio[j, s_src : s_src + seg]
        ratio_db = float(rng.uniform(-5, 5))
        e_p = audio[i].pow(2).mean().clamp_min(1e-8)
        e_s = src.pow(2).mean().clamp_min(1e-8)
        scale = torch.sqrt(e_p / (e_s * 10 ** (ratio_db / 10)))
        out[i, s_dst : s_dst + seg] += scale * src
    return out


def _objective(model, arch: str, batch, mask_np, targets, idx, spec: dict, step: int,
               rng: np.random.Generator, device) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """One step's loss (and its parts) of the architecture's self-supervised objective:
    contrastive + diversity for wav2vec2 (Gumbel temperature annealed), masked prediction of
    cluster targets for HuBERT and WavLM (WavLM on utterance mixtures)."""
    mask = torch.from_numpy(mask_np).to(device)
    if arch == "wav2vec2":
        steps = spec["steps"]
        model.set_gumbel_temperature(max(2.0 * (0.25 ** (step / max(1, steps))), 0.5))
        neg = torch.from_numpy(sample_negatives(mask_np, model.config.num_negatives, rng))
        out = model(batch.to(device), mask_time_indices=mask,
                    sampled_negative_indices=neg.to(device))  # fmt: skip
        extra = {"contrastive": out.contrastive_loss.item() / float(mask.sum()),
                 "diversity": out.diversity_loss.item()}  # fmt: skip
        return out.loss / mask.sum(), extra
    if arch == "wavlm":
        batch = mix_utterances(batch, rng, spec.get("mix_prob", 0.2))
    return model(batch.to(device), mask, targets[idx].to(device)), {}


def _save_partial(base, out_dir: str | os.PathLike, spec: dict) -> Path:
    """``save_pretrained`` of the backbone into ``<out_dir>.partial`` (float16 when asked),
    the model itself left in float32."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    base.config.architectures = [type(base).__name__]
    if spec.get("save_dtype", "float32") == "float16":
        base.half()
    base.save_pretrained(tmp, safe_serialization=True)
    base.float()
    return tmp


def pretrain(
    audio: np.ndarray,
    spec: dict,
    out_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    device: torch.device,
    log=print,
    progress: bool = True,
) -> dict:
    """Pretrain one backbone on ``audio`` (N, 16000) and save it with ``save_pretrained`` to
    ``out_dir`` (float16 if ``spec['save_dtype'] == 'float16'``); returns a summary.

    ``work_dir`` holds the resumable checkpoint; a rerun after a kill continues from it."""
    from tqdm import tqdm

    arch, steps, bs = spec["arch"], spec["steps"], spec["batch_size"]
    seed = spec.get("seed", 0)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(audio)
    x_all = (x_all - x_all.mean(1, keepdim=True)) / (x_all.std(1, keepdim=True) + 1e-7)
    targets = None
    if arch != "wav2vec2":
        t0 = time.time()
        targets, _, _ = cluster_targets(x_all, spec.get("clusters", 50), seed=seed)
        log(f"k-means targets ({spec.get('clusters', 50)} clusters) in {time.time() - t0:.1f}s")
    model, base = build_pretraining_model(arch, spec)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01)
    frames = int(base._get_feat_extract_output_lengths(torch.tensor(audio.shape[1])))
    work = Path(work_dir)
    ckpt = work / "checkpoint"
    spec_hash = config_hash(spec)
    start, history = resume_checkpoint(ckpt, model, opt, rng, spec_hash, log)
    t_start = time.time()
    bar = tqdm(range(start, steps), desc=f"pretrain {arch}", disable=not progress, mininterval=10)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, spec["lr"], warmup_frac=0.08)
        idx = torch.from_numpy(rng.choice(len(x_all), size=bs, replace=False))
        batch = x_all[idx]
        mask_np = mask_indices(bs, frames, spec.get("mask_prob", 0.5), spec.get("mask_length", 4),
                               rng)  # fmt: skip
        loss, extra = _objective(model, arch, batch, mask_np, targets, idx, spec, step, rng,
                                 device)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            history.append({"step": step, "loss": loss.item(), **extra})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % spec.get("checkpoint_every", 200) == 0 and step + 1 < steps:
            save_checkpoint(ckpt, model, opt, step + 1, rng, history, spec_hash)
    elapsed = time.time() - t_start
    tmp = _save_partial(base, out_dir, spec)
    tail = history[-5:]
    summary = {
        "arch": arch,
        "steps": steps,
        "resumed_from": start,
        "seconds_this_run": round(elapsed, 1),
        "final_loss": float(np.mean([h["loss"] for h in tail])) if tail else None,
        "first_loss": history[0]["loss"] if history else None,
        "parameters": sum(p.numel() for p in base.parameters()),
        "device": str(device),
    }
    (tmp / "loss_history.json").write_text(json.dumps(history))
    return {"summary": summary, "partial_dir": str(tmp)}


def finalize(partial_dir: str | os.PathLike, out_dir: str | os.PathLike, provenance: dict):
    """Write the provenance file and the DONE marker, give the folder the umask's
    permissions, then move it into place."""
    tmp, out = Path(partial_dir), Path(out_dir)
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1, sort_keys=True))
    (tmp / "DONE").write_text("complete\n")
    apply_umask(tmp)  # safetensors writes 0600: give the folder the umask's permissions
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
