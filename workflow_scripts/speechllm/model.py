"""The SpeechLLM (SLAM-style): a frozen speech encoder -> a projector -> a causal LM decoder.

* Encoder: any backbone ``transformers`` loads with ``AutoModel`` (a shipped small backbone, a
  hub checkpoint such as ``facebook/hubert-base-ls960``); frozen. Its hidden state
  ``encoder_layer`` of each utterance, computed one utterance at a time (no padding, so a
  clip's features do not depend on its batch), is what the projector reads.
* Projector: ``stack`` consecutive frames concatenated (frame rate / stack; a remainder is
  zero-padded), then a linear map or a two-layer MLP to the decoder's width.
* Decoder: ``AutoModelForCausalLM.from_pretrained(source, use_safetensors=True)`` (the small
  Llama-architecture decoder, ``Qwen/Qwen2.5-0.5B``, ...), frozen or LoRA-adapted (``peft``).

Input of the decoder for task ``t`` with prompt template ``prefix {speech} suffix``:
``embed(prefix) + projector(speech) + embed(suffix) [+ embed(target) + embed(eos)]``, left
padded, positions counted over the valid tokens. Greedy decoding uses the key-value cache.

A SpeechLLM folder holds ``config.json`` (encoder and decoder references, encoder layer,
projector shape, prompts, LoRA settings), ``projector.safetensors`` and the LoRA adapter
(``lora/``, peft's format). References to local folders are stored relative to the SpeechLLM
folder, hub ids as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

CONFIG = "config.json"
PROJECTOR = "projector.safetensors"
LORA_DIR = "lora"


# ----------------------------------------------------------------------------------------
# Encoder and projector
# ----------------------------------------------------------------------------------------
def load_encoder(source: str):
    """A frozen speech encoder (``AutoModel``, safetensors only, float32, eval mode)."""
    from transformers import AutoModel

    enc = AutoModel.from_pretrained(str(source), use_safetensors=True, dtype=torch.float32)
    enc.eval().requires_grad_(False)
    return enc


def encode(encoder, audio: Iterable[np.ndarray], layer: int) -> list[torch.Tensor]:
    """Hidden state ``layer`` (an index into ``output_hidden_states``; negative counts from the
    end) of each waveform: a list of (frames, D) float32 tensors (a few utterances; a split
    streams through :func:`iter_encode`)."""
    return list(iter_encode(encoder, audio, layer))


@torch.no_grad()
def iter_encode(encoder, audio: Iterable[np.ndarray], layer: int) -> Iterator[torch.Tensor]:
    """:func:`encode` one waveform at a time, yielding each utterance's features as it goes."""
    from workflow_scripts.backbones.registry import normalize_audio

    dev = next(encoder.parameters()).device
    for wave in audio:
        x = normalize_audio(torch.as_tensor(np.asarray(wave, np.float32))[None]).to(dev)
        states = encoder(x, output_hidden_states=True).hidden_states
        yield states[layer][0].float().cpu()


class Projector(nn.Module):
    """Frame stacking (``stack`` frames -> one) then ``Linear`` (``kind="linear"``) or
    ``Linear -> GELU -> Linear`` (``kind="mlp"``, width ``hidden``) to ``out_dim``; or
    (``kind="conv"``) downsampling by strided convolutions instead of stacking: ``log2(stack)``
    ``Conv1d(kernel 3, stride 2) -> GELU`` layers of width ``hidden`` (each frame then sees its
    neighbours), then ``Linear`` to ``out_dim``; ``stack`` must be a power of two."""

    def __init__(self, in_dim: int, out_dim: int, stack: int = 4, kind: str = "mlp",
                 hidden: int = 512) -> None:  # fmt: skip
        super().__init__()
        if kind not in ("linear", "mlp", "conv"):
            raise ValueError(f"unknown projector kind {kind!r}; allowed: linear, mlp, conv")
        self.spec = {"in_dim": in_dim, "out_dim": out_dim, "stack": stack, "kind": kind,
                     "hidden": hidden}  # fmt: skip
        self.stack = stack
        d = in_dim * stack
        if kind == "linear":
            self.net = nn.Linear(d, out_dim)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        else:
            n = stack.bit_length() - 1
            if stack != 2**n:
                raise ValueError(f"a conv projector needs a power-of-two stack, got {stack}")
            convs = [m for i in range(n) for m in (nn.Conv1d(in_dim if i == 0 else hidden,
                     hidden, 3, stride=2, padding=1), nn.GELU())]  # fmt: skip
            self.convs = nn.Sequential(*convs)
            self.net = nn.Linear(hidden if n else in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(frames, in_dim) -> (ceil(frames / stack), out_dim)."""
        if self.spec["kind"] == "conv":
            return self.net(self.convs(x.T[None])[0].T)
        pad = (-x.shape[0]) % self.stack
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        return self.net(x.reshape(x.shape[0] // self.stack, -1))


# ----------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------
def load_decoder(source: str):
    """A causal LM decoder (``AutoModelForCausalLM``, safetensors only, float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    dec = AutoModelForCausalLM.from_pretrained(str(source), use_safetensors=True,
                                               dtype=torch.float32)  # fmt: skip
    return dec.eval()


def decoder_layers(decoder) -> nn.ModuleList:
    """The decoder blocks (``model.layers`` of a Llama / Qwen2 causal LM, peft-wrapped or not)."""
    base = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
    return base.model.layers


def add_lora(decoder, lora: dict):
    """``decoder`` with fresh LoRA adapters (``peft``) on ``lora["targets"]`` (module names in
    each block, e.g. ``q_proj``), rank ``r``, ``alpha``; only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0, bias="none",
                     target_modules=list(lora["targets"]))  # fmt: skip
    return get_peft_model(decoder, cfg)


# ----------------------------------------------------------------------------------------
# The composed model
# ----------------------------------------------------------------------------------------
class SpeechLLM(nn.Module):
    """Projector + decoder (+ optionally the frozen encoder) with the task prompts; see the
    module docstring. ``prompts`` maps task -> template with one ``{speech}`` slot."""

    def __init__(self, decoder, tokenizer, projector: Projector, prompts: dict[str, str],
                 encoder=None, encoder_layer: int = -1) -> None:  # fmt: skip
        super().__init__()
        self.decoder, self.projector, self.encoder = decoder, projector, encoder
        self.tokenizer, self.prompts, self.encoder_layer = tokenizer, dict(prompts), encoder_layer
        self._prompt_cache: dict[str, tuple[list[int], list[int]]] = {}

    # -- token sequences -----------------------------------------------------------------
    def prompt_ids(self, task: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before and after the speech."""
        if task not in self._prompt_cache:
            if task not in self.prompts:
                raise ValueError(f"task {task!r} has no prompt; tasks: {list(self.prompts)}")
            before, after = self.prompts[task].split("{speech}")
            self._prompt_cache[task] = (self.with_bos(self._ids(before)), self._ids(after))
        return self._prompt_cache[task]

    def with_bos(self, ids: list[int]) -> list[int]:
        """``ids`` after the tokenizer's begin-of-sequence token, once: added when the
        tokenizer has one and ``ids`` do not already start with it (a prompt that writes
        ``<bos>``). The one BOS rule of every decoder input: the speech prompt and the
        text-only input of the similarity cells."""
        bos = self.tokenizer.bos_token_id
        return ids if bos is None or ids[:1] == [bos] else [bos, *ids]

    def _ids(self, text: str) -> list[int]:
        text = text.strip(" ")  # the spaces around {speech}; a newline is part of the prompt
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def target_ids(self, texts: list[str], eos: bool = True) -> list[list[int]]:
        """Token ids of each target text (a leading space, as text following a prompt), plus
        the end-of-sequence token when ``eos``."""
        tail = [self.tokenizer.eos_token_id] if eos else []
        return [self.tokenizer(" " + t, add_special_tokens=False).input_ids + tail for t in texts]

    def decode_ids(self, ids: list[list[int]]) -> list[str]:
        """Text of generated ids, cut at the first end-of-sequence token."""
        eos = self.tokenizer.eos_token_id
        out = []
        for seq in ids:
            seq = seq[: seq.index(eos)] if eos in seq else seq
            out.append(" ".join(self.tokenizer.decode(seq, skip_special_tokens=True).split()))
        return out

    # -- embeddings ----------------------------------------------------------------------
    def embed_tokens(self, ids) -> torch.Tensor:
        emb = self.decoder.get_input_embeddings()
        dev = emb.weight.device
        return emb(torch.as_tensor(ids, dtype=torch.long, device=dev))

    def sequences(
        self,
        feats: list[torch.Tensor],
        task: str | list[str],
        targets: list[list[int]] | None = None,
    ) -> list[tuple[torch.Tensor, int]]:
        """Per utterance, the decoder's input embeddings (prefix, projected speech, suffix,
        target) and the length of the part before the target; ``task`` is one task for all
        utterances or one per utterance."""
        tasks = [task] * len(feats) if isinstance(task, str) else list(task)
        dev = self.decoder.get_input_embeddings().weight.device
        out = []
        for i, f in enumerate(feats):
            before, after = self.prompt_ids(tasks[i])
            speech = self.projector(f.to(dev))
            parts = [self.embed_tokens(before), speech, self.embed_tokens(after)]
            n_prompt = sum(p.shape[0] for p in parts)
            if targets is not None:
                parts.append(self.embed_tokens(targets[i]))
            out.append((torch.cat(parts), n_prompt))
        return out

    @staticmethod
    def pad_left(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded (B, S, H) embeddings, the (B, S) attention mask and position ids
        counted over the valid tokens."""
        S = max(s.shape[0] for s in seqs)
        H, dev, dt = seqs[0].shape[1], seqs[0].device, seqs[0].dtype
        emb = torch.zeros(len(seqs), S, H, device=dev, dtype=dt)
        mask = torch.zeros(len(seqs), S, dtype=torch.long, device=dev)
        for i, s in enumerate(seqs):
            emb[i, S - s.shape[0] :] = s
            mask[i, S - s.shape[0] :] = 1
        return emb, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def batch(self, feats, task: str, targets: list[list[int]] | None = None):
        """(embeddings, mask, positions, labels): labels are the target ids at their positions
        (shifted inside the decoder's loss) and -100 elsewhere; None without targets."""
        seqs = self.sequences(feats, task, targets)
        emb, mask, pos = self.pad_left([s for s, _ in seqs])
        if targets is None:
            return emb, mask, pos, None
        labels = torch.full(mask.shape, -100, dtype=torch.long, device=mask.device)
        for i, tgt in enumerate(targets):
            labels[i, mask.shape[1] - len(tgt) :] = torch.as_tensor(tgt)
        return emb, mask, pos, labels

    # -- forward passes ------------------------------------------------------------------
    def features(self, audio: list[np.ndarray]) -> list[torch.Tensor]:
        """The frozen encoder's features of waveforms (needs ``encoder``)."""
        if self.encoder is None:
            raise ValueError("this SpeechLLM was loaded without its encoder")
        return encode(self.encoder, audio, self.encoder_layer)

    def forward(self, feats: list[torch.Tensor], task: str, targets=None, **kwargs):
        """The decoder's output (logits, loss when ``targets`` are given) on encoder features."""
        emb, mask, pos, labels = self.batch(feats, task, targets)
        return self.decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                            labels=labels, **kwargs)  # fmt: skip

    @torch.no_grad()
    def generate(self, feats: list[torch.Tensor], task: str, max_new_tokens: int) -> list[str]:
        """Greedy decoding (key-value cache) of each utterance's features; the decoded texts.
        Only the last position's logits are computed (a real LM head: batch x vocabulary, not
        batch x tokens x vocabulary)."""
        emb, mask, pos, _ = self.batch(feats, task)
        eos = self.tokenizer.eos_token_id
        out = self.decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                           use_cache=True, logits_to_keep=1)  # fmt: skip
        tokens = []
        done = torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            tokens.append(nxt)
            done |= nxt == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            pos = pos[:, -1:] + 1
            out = self.decoder(inputs_embeds=self.embed_tokens(nxt)[:, None], attention_mask=mask,
                               position_ids=pos, past_key_values=out.past_key_values,
                               use_cache=True)  # fmt: skip
        ids = torch.stack(tokens, 1).tolist()
        return self.decode_ids(ids)


# ----------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------
def reference(target: str, folder: str | os.PathLike) -> str:
    """How a SpeechLLM folder names ``target``: a local folder relative to ``folder``, a hub id
    as it is."""
    if Path(target).exists():  # symbolic links are kept, not followed
        return os.path.relpath(os.path.abspath(target), os.path.abspath(folder))
    return str(target)


def weights_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 of a model folder's weights: its ``*.safetensors`` files (names and contents),
    not its logs or provenance, which may be edited without changing the model. Files the
    workflow's digest cache holds unchanged (a decoder Snakemake hashed as a source input) are
    not read again: a real decoder is gigabytes, and every features job checks it."""
    from workflow_scripts.core.sources import job_cache

    return job_cache().path_digest(folder, "*.safetensors")


def resolve(ref: str, folder: str | os.PathLike) -> str:
    """The inverse of :func:`reference`: a folder relative to ``folder`` when it exists there,
    else ``ref`` itself (a hub id, or a path relative to the working directory)."""
    p = Path(folder) / ref
    return str(p) if p.exists() else ref


def save_speechllm(model: SpeechLLM, folder: str | os.PathLike, encoder: str, decoder: str,
                   extra: dict | None = None) -> None:  # fmt: skip
    """Write ``config.json``, ``projector.safetensors`` and the LoRA adapter (when the decoder
    is peft-wrapped) into ``folder``; ``encoder`` and ``decoder`` are the sources the model was
    built from."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = None
    if hasattr(model.decoder, "peft_config"):
        model.decoder.save_pretrained(str(folder / LORA_DIR))
        pc = model.decoder.peft_config["default"]
        lora = {"r": pc.r, "alpha": pc.lora_alpha, "targets": sorted(pc.target_modules)}
    cfg = {
        "model_type": "speechllm",
        "encoder": reference(encoder, folder),
        "encoder_layer": model.encoder_layer,
        "decoder": reference(decoder, folder),
        "projector": model.projector.spec,
        "prompts": model.prompts,
        "lora": lora,
        **(extra or {}),
    }
    (folder / CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True))
    state = {k: v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()}
    save_file(state, str(folder / PROJECTOR))


def read_config(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / CONFIG).read_text())


def load_speechllm(folder: str | os.PathLike, with_encoder: bool = True, merge: bool = True,
                   device="cpu", adapter: bool = True) -> SpeechLLM:  # fmt: skip
    """A saved SpeechLLM in eval mode: the decoder with its LoRA adapter merged (``merge``, a
    plain decoder whose layers can be removed) or kept as a peft model, or without it
    (``adapter=False``: the base decoder exactly as its folder holds it, the adapter never
    loaded; the text-only condition of the paper's Fig. 1a); the encoder only when
    ``with_encoder`` (cells that read cached features do not need it)."""
    from safetensors.torch import load_file

    from workflow_scripts.speechllm.tokenizer import load_tokenizer

    cfg = read_config(folder)
    dec_src = resolve(cfg["decoder"], folder)
    decoder = load_decoder(dec_src)
    if cfg.get("lora") and adapter:
        from peft import PeftModel

        decoder = PeftModel.from_pretrained(decoder, str(Path(folder) / LORA_DIR))
        if merge:
            decoder = decoder.merge_and_unload()
    p = cfg["projector"]
    projector = Projector(p["in_dim"], p["out_dim"], p["stack"], p["kind"], p["hidden"])
    projector.load_state_dict(load_file(str(Path(folder) / PROJECTOR)))
    encoder = load_encoder(resolve(cfg["encoder"], folder)) if with_encoder else None
    model = SpeechLLM(decoder, load_tokenizer(dec_src), projector, cfg["prompts"], encoder,
                      cfg["encoder_layer"])  # fmt: skip
    return model.to(device).eval().requires_grad_(False)
