"""LoRA healing (Moumen et al.) of a layer-pruned classifier."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from workflow_scripts.backbones.clips import as_clips
from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.backbones.registry import normalize_audio
from workflow_scripts.pruning.layers import is_wavlm, n_layers


def lora_target_modules(model) -> list[str]:
    """Default LoRA targets: the attention query/value projections of every remaining block.

    WavLM's attention calls ``F.multi_head_attention_forward`` with ``q_proj.weight`` etc.
    directly, which bypasses a LoRA wrapper around ``q_proj``/``v_proj``; for WavLM the FFN
    projections (``feed_forward.intermediate_dense``/``output_dense``) are adapted instead.
    """
    if is_wavlm(model):
        return ["feed_forward.intermediate_dense", "feed_forward.output_dense"]
    return ["attention.q_proj", "attention.v_proj"]


def heal_with_lora(
    pruned_model,
    audio,
    labels: np.ndarray | None,
    steps: int = 100,
    lr: float = 1e-4,
    rank: int = 8,
    alpha: float = 16.0,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    seed: int = 0,
    target_modules: Sequence[str] | None = None,
    log=None,
):
    """LoRA healing (Moumen et al.) of a pruned classifier; returns a new, merged model.

    Trains LoRA adapters (``peft``) on ``target_modules`` (default :func:`lora_target_modules`,
    names relative to each block of ``encoder.layers``) with cross entropy on the given
    *training-split* clips (a :class:`~workflow_scripts.backbones.clips.ClipSet` read per
    step, ``labels`` None, or float32 audio with its ``labels`` in memory) for ``steps`` AdamW
    steps of ``batch_size`` random clips; everything
    else (conv front end, head) stays frozen. The adapters are merged, so the result is a
    plain model with the same blocks and parameter count. The input model is not modified.
    Raises RuntimeError if the targets get no gradient (a forward that bypasses the wrappers).
    """
    from peft import LoraConfig, get_peft_model

    device = torch.device(device)
    L = n_layers(pruned_model)
    names = list(target_modules or lora_target_modules(pruned_model))
    alt = "|".join(n.replace(".", r"\.") for n in names)
    regex = rf".*encoder\.layers\.\d+\.({alt})"
    model = copy.deepcopy(pruned_model).to(device)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=regex, bias="none")
    torch.manual_seed(seed)  # the adapters' initialisation is part of the healing
    peft_model = get_peft_model(model, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"no LoRA parameters created for targets {names}")
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    clips = as_clips(audio, labels)
    bs = min(batch_size, len(clips))
    peft_model.train()
    for step in range(steps):
        idx = rng.choice(len(clips), size=bs, replace=False)
        x = normalize_audio(torch.from_numpy(clips.read(idx))).to(device)
        y = torch.from_numpy(clips.labels[idx]).to(device)
        np.random.seed((seed * 1_000_003 + step) % 2**32)  # SpecAugment masks (numpy's RNG)
        with autocast(device):
            loss = peft_model(input_values=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0 and all(p.grad is None for p in params):
            raise RuntimeError(
                f"LoRA targets {names} receive no gradient: the model's forward bypasses them "
                "(e.g. WavLM attention uses q_proj.weight directly)"
            )
        opt.step()
        if log is not None and (step % 10 == 0 or step == steps - 1):
            log(f"heal step {step}: loss {float(loss):.4f}")
    healed = peft_model.merge_and_unload()
    healed.eval()
    if n_layers(healed) != L:
        raise RuntimeError("healing changed the number of blocks")
    return healed
