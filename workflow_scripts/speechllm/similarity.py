"""Decoder-layer similarity of a SpeechLLM (Moumen et al., Gromov et al. 2024): the angular
distance between the residual stream before block l and before block l+n,
d(h_l, h_l+n) = arccos(cos(x_l, x_l+n)) / pi, averaged over utterances, and the block influence
BI_l = 1 - cos(h_l, h_l+1) on flattened sequences (ShortGPT).

States: ``h_0`` = the decoder's input embeddings, ``h_l`` = the output of block ``l - 1`` (forward
hooks on ``model.layers``; the final norm is not applied to ``h_L``, so every state is the same
residual stream). Two input types:

* ``speech``: the SpeechLLM's input for the task (prompt, projected speech, prompt) followed
  by the reference target text, teacher-forced (no end-of-sequence token);
* ``text``: the target text alone (after the tokenizer's begin-of-sequence token, if any:
  :meth:`SpeechLLM.with_bos`, the rule of the speech prompt too), the decoder as a plain
  language model.

``x`` is the state at the last token (``reduce="last"``, Gromov's choice: for both input types
the last word of the target) or the mean over the valid tokens (``"mean"``). The metrics
themselves are :func:`workflow_scripts.similarity.cosine.angular_distance_matrix` and
:func:`~workflow_scripts.similarity.cosine.block_influence`.
"""

from __future__ import annotations

import numpy as np
import torch

from workflow_scripts.speechllm.model import SpeechLLM, decoder_layers
from workflow_scripts.speechllm.settings import INPUTS, REDUCE
from workflow_scripts.speechllm.text import target_text


@torch.no_grad()
def residual_states(decoder, emb, mask, pos) -> list[torch.Tensor]:
    """The L+1 residual-stream states (B, S, H) of one forward pass, padding zeroed."""
    states = [emb]
    hooks = [layer.register_forward_hook(
        lambda _m, _i, out: states.append(out[0] if isinstance(out, tuple) else out))
        for layer in decoder_layers(decoder)]  # fmt: skip
    try:
        # the LM head on the last position only: the states are the blocks' outputs
        decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    m = mask[..., None].to(emb.dtype)
    return [s.float() * m for s in states]


def text_batch(model: SpeechLLM, texts: list[str]):
    """Left-padded embeddings, mask and positions of the texts alone (see the module
    docstring)."""
    seqs = [model.embed_tokens(model.with_bos(ids)) for ids in model.target_ids(texts, eos=False)]
    return model.pad_left(seqs)


def batch_inputs(model: SpeechLLM, feats, texts: list[str], task: str, input_type: str):
    """(embeddings, mask, positions) of one batch of an input type."""
    targets = [target_text(t, task) for t in texts]
    if input_type == "text":
        return text_batch(model, targets)
    if input_type == "speech":
        emb, mask, pos, _ = model.batch(feats, task, model.target_ids(targets, eos=False))
        return emb, mask, pos
    raise ValueError(f"unknown input type {input_type!r}; allowed: {list(INPUTS)}")


def _reduce(states: list[torch.Tensor], mask: torch.Tensor, reduce: str) -> torch.Tensor:
    """(L+1, B, 1, H): each state at the last token (left padding: the last position) or
    averaged over the valid tokens."""
    H = torch.stack(states)  # (L+1, B, S, H)
    if reduce == "last":
        return H[:, :, -1:, :]
    if reduce == "mean":
        n = mask.sum(-1).clamp(min=1).to(H.dtype)[None, :, None]
        return (H.sum(2) / n)[:, :, None, :]
    raise ValueError(f"unknown reduce {reduce!r}; allowed: {list(REDUCE)}")


def decoder_similarity(
    model: SpeechLLM,
    feats,
    texts: list[str],
    task: str,
    input_type: str,
    reduce: str = "last",
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """The (L+1, L+1) angular-distance matrix and the length-L block influence of ``model``'s
    decoder on the utterances ``feats`` saying ``texts`` (``feats`` unused for text input),
    averaged over utterances; computed batch by batch."""
    from workflow_scripts.similarity.cosine import angular_distance_matrix, block_influence

    ang, bi = [], []
    for i in range(0, len(texts), batch_size):
        f = feats[i : i + batch_size] if feats is not None else None
        emb, mask, pos = batch_inputs(model, f, texts[i : i + batch_size], task, input_type)
        states = residual_states(model.decoder, emb, mask, pos)
        ang.append(angular_distance_matrix(_reduce(states, mask, reduce).double(), "last",
                                           return_per_utterance=True))  # fmt: skip
        bi.append(block_influence(torch.stack(states).double(), return_per_utterance=True))
    return {"angular": np.concatenate(ang).mean(0), "block_influence": np.concatenate(bi).mean(0)}


def distance_rows(angular: np.ndarray) -> list[dict]:
    """The angular-distance matrix as rows ``(layer, n, distance)``: d(h_layer, h_layer+n) for
    every layer l = 0..L and n = 1..L-l (the paper's figure: layer vs block size n)."""
    L = angular.shape[0] - 1
    return [{"layer": i, "n": n, "distance": float(angular[i, i + n])}
            for n in range(1, L + 1) for i in range(0, L + 1 - n)]  # fmt: skip
