"""Physical removal of transformer blocks from speech-transformer classifiers.

Models are ``transformers`` audio classifiers (``Wav2Vec2`` / ``Hubert`` / ``WavLM``
``ForSequenceClassification``): conv feature encoder -> feature projection -> encoder (positional
conv, layer norm, ``encoder.layers``; the "stable layer norm" variant applies its layer norm after
the last block instead) -> projector -> mean over (valid) frames -> classifier. Pruning deletes
blocks of ``encoder.layers``; nothing is retrained (except by the optional
:func:`workflow_scripts.pruning.heal.heal_with_lora`).

Layer indices
    ``0 .. L-1`` index ``encoder.layers`` of the model handed in. Hidden state ``h_l``
    (``l = 0..L``) is the input to block ``l`` (``h_0`` = what the stack receives, ``h_L`` =
    output of the last block), as in ``output_hidden_states``. The block influence of block
    ``l`` is about the transformation done by block ``l``, i.e. between ``h_l`` and ``h_{l+1}``:
    a score vector has length ``L`` (``similarity.block_influence`` of an ``(L+1)``-state stack
    gives exactly that).

WavLM and layer 0
    Only WavLM's block 0 owns the relative-position-bias table (``attention.rel_attn_embed``);
    the bias it computes is handed from block to block and every block gates it with its own
    parameters. The table is an embedding of positions, not part of block 0's transformation,
    so :func:`remove_layers` *allows* removing block 0: the table is moved into the new first
    block (which is where ``from_pretrained`` expects it, so the saved model loads as an ordinary
    WavLM with fewer layers). Block 0's own weights (attention, gates, FFN) are deleted. The
    parameter count therefore falls by exactly one ordinary block per removed block.
    The paper's ``forward`` strategy keeps block 0 anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from workflow_scripts.backbones.registry import count_parameters, encoder_of


def stack(model) -> nn.ModuleList:
    """The transformer blocks (``encoder.layers``) of a classifier."""
    return encoder_of(model).encoder.layers


def n_layers(model) -> int:
    """Number of transformer blocks in ``model``."""
    return len(stack(model))


def is_wavlm(model) -> bool:
    """Whether ``model`` is a WavLM (its block 0 owns the relative-position table)."""
    return getattr(model.config, "model_type", "") == "wavlm"


def check_supported(model) -> None:
    """ValueError for a head that layer removal is not defined for (weighted layer sum)."""
    if getattr(model.config, "use_weighted_layer_sum", False):
        raise ValueError(
            "use_weighted_layer_sum=True heads mix all hidden states; layer removal is only "
            "defined here for the last-hidden-state head"
        )


def validate_indices(indices: Sequence[int], L: int) -> list[int]:
    """The sorted block indices to remove; ValueError for duplicates, indices outside
    ``0 .. L-1`` or removing every block."""
    raw = [int(i) for i in indices]
    idx = sorted(set(raw))
    if len(idx) != len(raw):
        raise ValueError(f"duplicate layer indices in {raw}")
    if idx and (idx[0] < 0 or idx[-1] >= L):
        raise ValueError(f"layer indices {idx} out of range for {L} layers")
    if len(idx) >= L:
        raise ValueError(f"cannot remove all {L} layers (at least one must remain)")
    return idx


def transformer_parameters(model) -> int:
    """Parameters inside ``encoder.layers`` (the transformer blocks only)."""
    return count_parameters(stack(model))


def remove_layers(model, indices: Sequence[int]):
    """A deep copy of ``model`` with the blocks ``indices`` (into ``encoder.layers``) deleted.

    ``config.num_hidden_layers`` is updated, the head (projector, classifier) is kept unchanged,
    the input model is not modified. ``config.kept_layer_ids`` records, for each remaining block,
    its index in the model first pruned (so repeated pruning keeps the original numbering).
    For WavLM, removing block 0 moves its relative-position-bias table into the new first block
    (see module docstring). At least one block must remain.
    """
    check_supported(model)
    L = n_layers(model)
    idx = validate_indices(indices, L)
    new = copy.deepcopy(model)
    layers = stack(new)
    keep = [i for i in range(L) if i not in set(idx)]
    if is_wavlm(new) and 0 in idx:
        table = layers[0].attention.rel_attn_embed
        first = layers[keep[0]].attention
        if hasattr(first, "rel_attn_embed"):
            raise RuntimeError("WavLM block already owns a relative position table")
        del layers[0].attention.rel_attn_embed
        first.rel_attn_embed = table
    encoder_of(new).encoder.layers = nn.ModuleList([layers[i] for i in keep])
    old_ids = list(getattr(new.config, "kept_layer_ids", None) or range(L))
    configs = {id(new.config): new.config}
    for module in new.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            configs[id(cfg)] = cfg
    for cfg in configs.values():
        cfg.num_hidden_layers = len(keep)
        cfg.kept_layer_ids = [int(old_ids[i]) for i in keep]
    return new
