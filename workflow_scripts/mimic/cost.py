"""What a mimicker saves: parameters and latency of the replaced transformer stack vs the
mimicker, and of the whole model vs the :class:`~workflow_scripts.mimic.model.MimickedModel`
(each pair timed interleaved in one process, fp32: :mod:`workflow_scripts.core.timing`)."""

from __future__ import annotations

import torch

from workflow_scripts.backbones.registry import count_parameters, encoder_of
from workflow_scripts.core.timing import TIMING_PRECISION, compare_latency
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
    precision: str = TIMING_PRECISION,
) -> dict:
    """Parameters and latency of the original vs the mimicked model, each pair timed against
    each other interleaved in this process (:func:`~workflow_scripts.core.timing.compare_latency`:
    ``warmup`` untimed rounds, ``repeats`` timed rounds, every call in ``precision``).

    batch: raw audio (B, samples), already normalised. ``model`` and ``mimicker`` are moved to
    ``device`` and put in eval mode. Timed pairs: (a) the transformer stack (``encoder``) vs
    the mimicker, on the same feature-projection output of ``batch``; (b) the whole model vs
    the :class:`MimickedModel` on ``batch``.

    Returns :func:`parameter_summary` plus ``stack_ms``, ``mimicker_ms``, ``model_ms``,
    ``mimicked_model_ms`` (medians per batch), per-sample versions (``*_ms_per_sample``),
    ``stack_latency_reduction_pct``, ``model_latency_reduction_pct`` (from the medians),
    ``speedup`` / ``speedup_lo`` / ``speedup_hi`` (whole model / mimicked model: the median
    per-round ratio and its 95% interval), ``stack_speedup`` / ``stack_speedup_lo`` /
    ``stack_speedup_hi`` (stack / mimicker), ``batch_size``, ``frames``, ``device``,
    ``warmup``, ``repeats``, ``timing_precision``, ``timing_device``, ``timing_clock``
    (:func:`~workflow_scripts.core.timing.compare_latency`'s clock), ``latency_threads``.
    """
    device = torch.device(device)
    model.to(device).eval()
    mimicker.to(device).eval()
    mm = MimickedModel(model, mimicker, head).to(device).eval()
    x = batch.to(device)
    with torch.inference_mode():
        feats = feature_projection(model, x)
    stack = encoder_of(model).encoder
    pair = {"device": device, "warmup": warmup, "repeats": repeats, "precision": precision}
    st = compare_latency(lambda: stack(feats), lambda: mimicker(feats), **pair)
    whole = compare_latency(lambda: model(x), lambda: mm(x), **pair)
    stack_ms, mim_ms = st["base_latency_ms"], st["latency_ms"]
    model_ms, mm_ms = whole["base_latency_ms"], whole["latency_ms"]
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
            **{k: whole[k] for k in ("speedup", "speedup_lo", "speedup_hi")},
            **{f"stack_{k}": st[k] for k in ("speedup", "speedup_lo", "speedup_hi")},
            "batch_size": int(bsz),
            "frames": int(feats.shape[1]),
            "device": str(device),
            "warmup": warmup,
            "repeats": repeats,
            "timing_precision": whole["precision"],
            "timing_device": whole["device"],
            "timing_clock": whole["clock"],
            "latency_threads": whole["threads"],
        }
    )
    return report
