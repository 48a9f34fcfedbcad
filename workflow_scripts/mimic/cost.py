"""What a mimicker saves: parameters and median latency of the replaced transformer stack vs
the mimicker, and of the whole model vs the :class:`~workflow_scripts.mimic.model.MimickedModel`."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.backbones.registry import count_parameters, encoder_of
from workflow_scripts.core.timing import measure_latency
from workflow_scripts.mimic.model import (
    ClassifierHead,
    MimickedModel,
    Mimicker,
    feature_projection,
)


def replaced_stack_parameters(model) -> int:
    """Parameters of the transformer stack a mimicker replaces: the whole ``encoder`` module
    (positional convolution, its LayerNorm and every block)."""
    return count_parameters(encoder_of(model).encoder)


def reduction_pct(original: float, reduced: float) -> float:
    """``100 * (1 - reduced / original)``."""
    return 100.0 * (1.0 - reduced / original) if original else float("nan")


def parameter_summary(model, mimicker: Mimicker, head: ClassifierHead | None = None) -> dict:
    """Parameter counts of the replaced stack, the mimicker, the whole model and the
    mimicked model, with reductions in %."""
    stack = replaced_stack_parameters(model)
    mim = count_parameters(mimicker)
    whole = count_parameters(model)
    mimicked = count_parameters(MimickedModel(model, mimicker, head))
    return {
        "stack_params": stack,
        "mimicker_params": mim,
        "model_params": whole,
        "mimicked_model_params": mimicked,
        "stack_param_reduction_pct": reduction_pct(stack, mim),
        "model_param_reduction_pct": reduction_pct(whole, mimicked),
    }


def cost_report(
    model,
    mimicker: Mimicker,
    batch: torch.Tensor,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    head: ClassifierHead | None = None,
    amp: bool = False,
    reference: dict | None = None,
) -> dict:
    """Parameters and median latency (``timing.measure_latency``) of the original vs the
    mimicked model.

    batch: raw audio (B, samples), already normalised. ``model`` and ``mimicker`` are moved to
    ``device`` and put in eval mode. Timed (each in its own ``measure_latency`` call):
    (a) the transformer stack (``encoder``) alone and the mimicker alone, on the same
    feature-projection output of ``batch``; (b) the whole model and the :class:`MimickedModel`
    on ``batch``. ``amp``: bf16 autocast on CUDA. ``reference``: an earlier report of the same
    model/batch whose stack and whole-model timings are reused (to time several mimickers).

    Returns :func:`parameter_summary` plus ``stack_ms``, ``mimicker_ms``, ``model_ms``,
    ``mimicked_model_ms`` (medians per batch), per-sample versions (``*_ms_per_sample``),
    ``stack_latency_reduction_pct``, ``model_latency_reduction_pct``, ``batch_size``,
    ``frames``, ``device``, ``warmup``, ``repeats``.
    """
    device = torch.device(device)
    model.to(device).eval()
    mimicker.to(device).eval()
    mm = MimickedModel(model, mimicker, head).to(device).eval()
    x = batch.to(device)
    ctx = (lambda: autocast(device)) if amp else nullcontext
    with torch.inference_mode(), ctx():
        feats = feature_projection(model, x)
    stack = encoder_of(model).encoder

    def timed(fn):
        def call():
            with ctx():
                return fn()

        return measure_latency(call, device, warmup, repeats)["median_ms"]

    if reference is not None:
        stack_ms, model_ms = reference["stack_ms"], reference["model_ms"]
    else:
        stack_ms = timed(lambda: stack(feats))
        model_ms = timed(lambda: model(x))
    mim_ms = timed(lambda: mimicker(feats))
    mm_ms = timed(lambda: mm(x))
    bsz = x.shape[0]
    report = parameter_summary(model, mimicker, mm.head)
    report.update(
        {
            "stack_ms": stack_ms,
            "mimicker_ms": mim_ms,
            "model_ms": model_ms,
            "mimicked_model_ms": mm_ms,
            "stack_ms_per_sample": stack_ms / bsz,
            "mimicker_ms_per_sample": mim_ms / bsz,
            "model_ms_per_sample": model_ms / bsz,
            "mimicked_model_ms_per_sample": mm_ms / bsz,
            "stack_latency_reduction_pct": reduction_pct(stack_ms, mim_ms),
            "model_latency_reduction_pct": reduction_pct(model_ms, mm_ms),
            "batch_size": int(bsz),
            "frames": int(feats.shape[1]),
            "device": str(device),
            "warmup": warmup,
            "repeats": repeats,
        }
    )
    return report
