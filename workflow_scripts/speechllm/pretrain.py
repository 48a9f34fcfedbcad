"""Text pretraining of the small decoder: a Llama- (or Qwen2-) architecture causal LM with the
word-level tokenizer, trained as a language model on the command language's training sentences
(:func:`workflow_scripts.speechllm.text.pretraining_text`: English, the target languages of
the spec's ``tasks`` (default ``asr``, ``st``: German), and the task prompts with the text
standing in for the speech). Held-out sentences are never seen.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from pathlib import Path

import torch

from workflow_scripts.speechllm.settings import ARCHS, DEFAULT_PROMPTS, PRETRAIN_TASKS
from workflow_scripts.speechllm.text import (
    TASKS,
    Sentences,
    pretraining_examples,
    pretraining_formats,
    pretraining_text,
)


def pretraining_prompts(spec: dict) -> dict[str, str]:
    """The small decoder's token prompts of the spec's ``tasks`` (:data:`PRETRAIN_TASKS` by
    default), in task order."""
    tasks = spec.get("tasks") or PRETRAIN_TASKS
    return {t: DEFAULT_PROMPTS[t] for t in TASKS if t in tasks}


def decoder_config(spec: dict, tokenizer):
    """A ``LlamaConfig`` / ``Qwen2Config`` of a ``pretrain`` spec (``arch``, ``layers``,
    ``hidden``, ``heads``, ``kv_heads``, ``ffn``) for ``tokenizer``'s vocabulary, input and
    output embeddings tied."""
    from transformers import LlamaConfig, Qwen2Config

    arch = spec.get("arch", "llama")
    if arch not in ARCHS:
        raise ValueError(f"unknown decoder arch {arch!r}; allowed: {list(ARCHS)}")
    cls = LlamaConfig if arch == "llama" else Qwen2Config
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden"],
        intermediate_size=spec.get("ffn", 4 * spec["hidden"]),
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec.get("kv_heads", spec["heads"]),
        max_position_embeddings=spec.get("max_positions", 512),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def build_decoder(spec: dict, tokenizer, seed: int = 0):
    """A randomly initialised decoder of ``spec`` (``AutoModelForCausalLM.from_config``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(decoder_config(spec, tokenizer))


def text_batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and LM labels (-100 on padding) of ``texts``, each
    followed by the end-of-sequence token."""
    ids = [tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
           for t in texts]  # fmt: skip
    S = max(map(len, ids))
    x = torch.full((len(ids), S), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), S), dtype=torch.long)
    for i, seq in enumerate(ids):
        x[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return x, mask, x.masked_fill(mask == 0, -100)


def pretrain_decoder(spec: dict, text_cfg: dict, out_dir: str | os.PathLike, log=print) -> dict:
    """Pretrain a decoder of ``spec`` (``steps``, ``batch_size``, ``lr``, ``warmup_frac``,
    ``seed``, ``save_dtype``, ``tasks``: the prompts and languages it learns, with the
    tokenizer's vocabulary) on sentences of ``text_cfg``; saved with its tokenizer into
    ``<out_dir>.partial``. Returns ``{"summary": ..., "partial_dir": ...}`` (finish with
    :func:`workflow_scripts.backbones.pretrain.finalize`)."""
    from workflow_scripts.backbones.finetune import lr_at
    from workflow_scripts.speechllm.tokenizer import build_tokenizer

    prompts = pretraining_prompts(spec)
    tok = build_tokenizer(list(prompts))
    seed, steps, bs = spec.get("seed", 0), spec["steps"], spec["batch_size"]
    model = build_decoder(spec, tok, seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01)
    examples = pretraining_examples(Sentences(text_cfg), seed, pretraining_formats(prompts))
    history, t0 = [], time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, spec["lr"], spec.get("warmup_frac", 0.05))
        texts = [pretraining_text(s, kind, prompts) for s, kind in itertools.islice(examples, bs)]
        x, mask, labels = text_batch(tok, texts)
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 5)})
            log(f"step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    model.eval()
    tmp = Path(str(out_dir) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if spec.get("save_dtype", "float16") == "float16":
        model.half()
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / "loss_history.json").write_text(json.dumps(history))
    summary = {"arch": spec.get("arch", "llama"), "steps": steps,
               "seconds_this_run": round(time.time() - t0, 1),
               "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
               "parameters": sum(p.numel() for p in model.parameters()),
               "vocab_size": len(tok)}  # fmt: skip
    return {"summary": summary, "partial_dir": str(tmp)}
