"""Decoder-layer pruning of a SpeechLLM (Moumen et al.): whole decoder blocks
(``LlamaDecoderLayer`` / ``Qwen2DecoderLayer`` of ``model.layers``) removed, the encoder,
projector, embeddings, final norm and LM head kept, nothing retrained (healing:
:mod:`workflow_scripts.speechllm.heal`).

Removal orders are the layer-pruning stage's strategies (:mod:`workflow_scripts.pruning.strategies`,
the one registry) on the decoder's L blocks: ``backward``, ``forward``, ``forward_backward``,
``random`` (seeded), ``block_influence`` (ascending BI of the decoder blocks) and
``angular_block`` (per n the contiguous run l*..l*+n-1 with the smallest d(h_l, h_l+n)), the
scores from :func:`workflow_scripts.speechllm.similarity.decoder_similarity` on calibration
utterances of the validation split.

The quality of a pruned model is the WER of the task's target text on the test utterances,
greedy decoding; ΔWER = (WER_n - WER_0) / WER_0 is compared with the paper's 0.25 threshold
(:func:`workflow_scripts.speechllm.metrics.delta_wer`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

from torch import nn

from workflow_scripts.speechllm.model import decoder_layers
from workflow_scripts.speechllm.settings import STRATEGIES


def _base(decoder):
    return decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder


def _set_layers(decoder, layers: list[nn.Module], kept: list[int], layer_types) -> None:
    """Install ``layers`` (the blocks ``kept`` of the original) as the decoder's stack: the
    attention's cache index, ``num_hidden_layers`` and (Qwen2) ``layer_types`` follow."""
    base = _base(decoder)
    base.model.layers = nn.ModuleList(layers)
    for i, layer in enumerate(layers):
        layer.self_attn.layer_idx = i
    base.config.num_hidden_layers = len(layers)
    if layer_types is not None:
        base.config.layer_types = [layer_types[k] for k in kept]


def kept_layers(n_layers: int, removed: Sequence[int]) -> list[int]:
    """The block indices left after removing ``removed`` (validated: distinct, in range, at
    least one block left)."""
    removed = sorted(int(i) for i in removed)
    if len(set(removed)) != len(removed) or any(not 0 <= i < n_layers for i in removed):
        raise ValueError(f"bad removal set {removed} for {n_layers} decoder layers")
    if len(removed) >= n_layers:
        raise ValueError("at least one decoder layer must be kept")
    return [i for i in range(n_layers) if i not in set(removed)]


@contextlib.contextmanager
def removed_layers(decoder, removed: Sequence[int]) -> Iterator[None]:
    """The decoder with blocks ``removed`` taken out for the duration of the ``with`` block
    (no copy; the original stack, layer indices and config are restored afterwards)."""
    layers = list(decoder_layers(decoder))
    cfg = _base(decoder).config
    types = list(cfg.layer_types) if getattr(cfg, "layer_types", None) else None
    kept = kept_layers(len(layers), removed)
    _set_layers(decoder, [layers[i] for i in kept], kept, types)
    try:
        yield
    finally:
        _set_layers(decoder, layers, list(range(len(layers))), types)


def remove_layers(decoder, removed: Sequence[int]):
    """A copy of ``decoder`` without blocks ``removed`` (the input is not modified)."""
    new = copy.deepcopy(decoder)
    layers = list(decoder_layers(new))
    cfg = _base(new).config
    types = list(cfg.layer_types) if getattr(cfg, "layer_types", None) else None
    kept = kept_layers(len(layers), removed)
    _set_layers(new, [layers[i] for i in kept], kept, types)
    return new


def removal_plans(strategy: str, n_layers: int, settings: dict, scores: dict | None):
    """``[(seed, sets)]`` of a strategy on the decoder (``sets[n]`` = blocks removed at n, n = 0
    .. L-1), from the pruning registry; ``scores`` is :func:`decoder_similarity`'s output (the
    angular matrix for ``angular_block``, the block influences for ``block_influence``)."""
    from workflow_scripts.pruning.strategies import get
    from workflow_scripts.pruning.strategies import removal_plans as plans

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not a decoder strategy: {list(STRATEGIES)}")
    own = {k: v for k, v in settings.items() if k in get(strategy).defaults}
    s = None
    if strategy == "angular_block":
        s = scores["angular"]
    elif strategy == "block_influence":
        s = scores["block_influence"]
    return plans(strategy, n_layers, own, settings.get("keep_first"), scores=s)


def decoder_params(decoder) -> int:
    """Parameters of the decoder (embeddings and head included)."""
    return sum(p.numel() for p in decoder.parameters())
