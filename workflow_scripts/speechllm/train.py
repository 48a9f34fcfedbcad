"""SpeechLLM training (SLAM-style): the encoder frozen, the projector and the decoder's LoRA
adapters (or only the projector, ``lora: null``) trained with the decoder's next-token loss on
the target text of each task.

The frozen encoder's features of every training utterance are computed once, streamed into a
temporary feature file (:mod:`workflow_scripts.speechllm.features`, in ``$TMPDIR``: node-local
scratch on a cluster) and read back per mini-batch, so a step costs only the projector and the
decoder and memory does not grow with the number of utterances. A step draws ``batch_size``
utterances and gives each a task drawn uniformly from the model's tasks (one multi-task model per
encoder, as the paper's "single multi-task backbone").
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from workflow_scripts.speechllm.model import Projector, SpeechLLM, add_lora
from workflow_scripts.speechllm.settings import resolve_train
from workflow_scripts.speechllm.text import target_text


def build_speechllm(spec: dict, decoder, tokenizer, enc_dim: int, prompts: dict[str, str],
                    encoder=None) -> SpeechLLM:  # fmt: skip
    """A fresh SpeechLLM of a resolved ``train`` spec around a loaded ``decoder``: the decoder
    frozen, LoRA adapters added when ``spec["lora"]`` is set, a new projector (seeded)."""
    decoder.requires_grad_(False)
    if spec["lora"]:
        decoder = add_lora(decoder, spec["lora"])
    torch.manual_seed(spec["seed"])
    p = spec["projector"]
    hidden = decoder.get_input_embeddings().weight.shape[1]
    projector = Projector(enc_dim, hidden, p["stack"], p["kind"], p["hidden"])
    tasks = {t: prompts[t] for t in spec["tasks"]}
    return SpeechLLM(decoder, tokenizer, projector, tasks, encoder, spec["encoder_layer"])


def trainable(model: SpeechLLM) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fit(model: SpeechLLM, feats: list[torch.Tensor], texts: list[str], spec: dict,
        log=print) -> list[dict]:  # fmt: skip
    """Train ``model``'s trainable parameters (projector, LoRA) for ``spec["steps"]`` AdamW
    steps on the features ``feats`` of utterances saying ``texts``; returns the loss history.
    Each drawn utterance gets one of the model's tasks uniformly; an utterance of a real
    corpus gets its own task (:func:`~workflow_scripts.speechllm.splits.own_task`)."""
    from workflow_scripts.backbones.finetune import lr_at
    from workflow_scripts.speechllm.splits import own_task

    params = trainable(model)
    opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    rng = np.random.default_rng([spec["seed"], 61])
    tasks = list(model.prompts)
    bs = min(spec["batch_size"], len(feats))
    steps, history, t0 = spec["steps"], [], time.time()
    model.train()
    if model.encoder is not None:
        model.encoder.eval()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, spec["lr"], spec["warmup_frac"])
        idx = rng.choice(len(feats), size=bs, replace=False)
        task = [tasks[int(k)] for k in rng.integers(len(tasks), size=bs)]
        task = [own_task(texts[i], t) for i, t in zip(idx, task, strict=True)]  # corpora
        targets = [
            model.target_ids([target_text(texts[i], t)])[0] for i, t in zip(idx, task, strict=True)
        ]
        loss = model([feats[i] for i in idx], task, targets).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 5)})
            log(f"step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    model.eval()
    return history


def evaluate(
    model: SpeechLLM,
    feats: list[torch.Tensor],
    texts: list[str],
    task: str,
    batch_size: int = 64,
    max_new_tokens: int = 12,
) -> tuple[list[str], list[str]]:
    """(references, greedy hypotheses) of ``task`` on utterances ``feats`` saying ``texts``."""
    refs = [target_text(t, task) for t in texts]
    hyps: list[str] = []
    for i in range(0, len(feats), batch_size):
        hyps += model.generate(feats[i : i + batch_size], task, max_new_tokens)
    return refs, hyps


def train_job(spec: dict, encoder: str, decoder: str, train_dir: str, val_dir: str,
              out_dir: str, log=print, progress: bool = True) -> dict:  # fmt: skip
    """Train one SpeechLLM of a ``train`` spec on the speech folders ``train_dir`` (its first
    ``train_utterances``) and score it on ``val_dir`` (greedy decoding, every task); saved into
    ``<out_dir>.partial`` (finish with :func:`workflow_scripts.backbones.pretrain.finalize`).
    Returns ``{"summary": ..., "partial_dir": ...}``."""
    import shutil
    import tempfile
    from pathlib import Path

    from workflow_scripts.speechllm.features import Features, encode_split
    from workflow_scripts.speechllm.metrics import scores
    from workflow_scripts.speechllm.model import (
        load_decoder,
        load_encoder,
        save_speechllm,
        weights_sha256,
    )
    from workflow_scripts.speechllm.settings import DEFAULT_PROMPTS
    from workflow_scripts.speechllm.speech import read_manifest
    from workflow_scripts.speechllm.splits import Rows, by_task, positions, texts
    from workflow_scripts.speechllm.tokenizer import load_tokenizer

    spec = resolve_train(spec)
    t0 = time.time()
    enc = load_encoder(encoder)
    rows, val = read_manifest(train_dir), read_manifest(val_dir)
    if by_task(rows):  # made from corpora: each task's own utterances
        rows = rows.iloc[positions(rows, spec["tasks"], spec["train_utterances"])]
        val = val.iloc[positions(val, spec["tasks"], None)].reset_index(drop=True)
    else:
        rows = rows.head(spec["train_utterances"]) if spec["train_utterances"] else rows
    with tempfile.TemporaryDirectory(prefix="speechllm-features-") as scratch:
        for name, folder, r in (("training", train_dir, rows), ("validation", val_dir, val)):
            encode_split(enc, folder, r, spec["encoder_layer"],
                         Path(scratch) / f"{name}.safetensors", progress=progress,
                         desc=f"encode {name}")  # fmt: skip
        feats = Features(Path(scratch) / "training.safetensors")
        val_feats = Features(Path(scratch) / "validation.safetensors")
        t_feat = time.time() - t0
        log(f"encoder features of {len(feats)} + {len(val_feats)} utterances: {t_feat:.0f} s")
        model = build_speechllm(spec, load_decoder(decoder), load_tokenizer(decoder),
                                feats.dim, spec["prompts"] or DEFAULT_PROMPTS)  # fmt: skip
        history = fit(model, feats, texts(rows, np.arange(len(rows))), spec, log)
        summary = {"train_utterances": len(feats), "validation_utterances": len(val_feats),
                   "feature_seconds": round(t_feat, 1),
                   "train_seconds": round(time.time() - t0 - t_feat, 1),
                   "trainable_parameters": sum(p.numel() for p in trainable(model)),
                   "first_loss": history[0]["loss"],
                   "final_loss": history[-1]["loss"]}  # fmt: skip
        for task in model.prompts:
            pos = positions(val, [task], None)
            refs, hyps = evaluate(model, Rows(val_feats, pos), texts(val, pos), task)
            for k, v in scores(refs, hyps).items():
                summary[f"validation_{task}_{k}"] = round(v, 5)
            log(f"validation {task}: {summary}")
    tmp = Path(str(out_dir) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sources = {"encoder": encoder, "decoder": decoder}
    digests = {f"{k}_weights_sha256": weights_sha256(v) for k, v in sources.items()
               if Path(v).exists()}  # fmt: skip
    save_speechllm(model, tmp, encoder, decoder, digests)
    (tmp / "loss_history.json").write_text(json.dumps(history))
    return {"summary": summary, "partial_dir": str(tmp), "digests": digests}
