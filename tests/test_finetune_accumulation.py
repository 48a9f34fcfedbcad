"""Gradient accumulation in keyword fine-tuning (``finetune.accumulation``): 1 is the training
loop as it was, bit for bit; k micro-batches of b give the gradients of one batch of k x b
while the model only ever sees b clips at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backbones import _data, tiny_classifier

from workflow_scripts.backbones import finetune as F
from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.backbones.plan import finetune_slice, resolve_finetune
from workflow_scripts.backbones.registry import normalize_audio

CPU = torch.device("cpu")


def reference_training(model, audio, y, spec):
    """The fine-tuning loop before accumulation existed, written out: seeded draws of one
    batch per step, forward under autocast, backward, clipping, AdamW (no feature cache)."""
    torch.manual_seed(spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    model.freeze_feature_encoder()
    model.config.mask_time_prob = spec["mask_time_prob"]
    model.train()
    opt, params = F._optimizer(model, spec)
    losses = []
    for step in range(spec["steps"]):
        for g in opt.param_groups:
            g["lr"] = F.lr_at(step, spec["steps"], spec["lr"], spec["warmup_frac"]) * g["lr_mult"]
        idx = rng.choice(len(y), size=spec["batch_size"], replace=False)
        x = normalize_audio(torch.from_numpy(audio[idx]))
        np.random.seed((spec["seed"] * 1_000_003 + step) % 2**32)
        with autocast(CPU):
            loss = model(x, labels=torch.from_numpy(y[idx])).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("accumulation", [None, 1])
def test_accumulation_1_is_the_old_training_bit_for_bit(accumulation):
    audio, y = _data(24)
    spec = resolve_finetune({"steps": 5, "batch_size": 8, "lr": 3e-3, "cache_features": False},
                            None)  # fmt: skip
    if accumulation is not None:
        spec["accumulation"] = accumulation
    ref = tiny_classifier()
    ref_losses = reference_training(ref, audio, y, spec)
    model = tiny_classifier()
    out = F.train_classifier(model, audio, y, spec, CPU, None, progress=False)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    logged = {h["step"]: h["loss"] for h in out["history"]}
    assert logged == {s: ref_losses[s] for s in logged}


def test_accumulation_1_stays_out_of_the_slice():
    cfg = {"models": {"m": {"hf": "x"}}, "corpus": {"words": None}, "evaluation": {"test_clips": 4},
           "pretrained_dir": "models"}  # fmt: skip
    assert "accumulation" not in finetune_slice({**cfg, "finetune": {}}, "m")["finetune"]
    assert "accumulation" not in finetune_slice({**cfg, "finetune": {"accumulation": 1}},
                                                "m")["finetune"]  # fmt: skip
    got = finetune_slice({**cfg, "finetune": {"accumulation": 4}}, "m")["finetune"]
    assert got["accumulation"] == 4


def test_micro_batches_sum_to_the_batch_gradient():
    """accumulate(): the gradients and loss of one batch of 8, from micro-batches of 4 and of
    3 + 3 + 2 (weighted by their share)."""
    audio, y = _data(8)
    x, labels = normalize_audio(torch.from_numpy(audio)), torch.from_numpy(y)
    grads = {}
    for parts in (1, 2, 3):
        model = tiny_classifier()
        model.eval()  # no dropout / masking: the same function of the batch
        model.zero_grad()
        if parts == 1:
            loss = model(x, labels=labels).loss
            loss.backward()
        else:
            loss = F.accumulate(model, x, labels, parts, CPU)
        grads[parts] = (loss.item(), [p.grad.clone() for p in model.parameters()
                                      if p.grad is not None])  # fmt: skip
    for parts in (2, 3):
        assert grads[parts][0] == pytest.approx(grads[1][0], rel=1e-5)
        for a, b in zip(grads[1][1], grads[parts][1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_effective_batch_is_drawn_at_once_and_run_in_micro_batches():
    """batch_size 4 x accumulation 2: each step draws 8 clips, the model sees 4 at a time."""
    audio, y = _data(24)
    spec = resolve_finetune({"steps": 3, "batch_size": 4, "accumulation": 2, "lr": 3e-3,
                             "cache_features": False}, None)  # fmt: skip
    model = tiny_classifier()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    out = F.train_classifier(model, audio, y, spec, CPU, None, progress=False)
    assert seen == [4] * 6
    assert np.isfinite(out["history"][0]["loss"])
