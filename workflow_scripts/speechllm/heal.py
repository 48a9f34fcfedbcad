"""LoRA healing of a decoder-pruned SpeechLLM (Moumen et al.): new LoRA adapters on the
remaining decoder blocks, trained on training-split utterances of one task (or of every task at
once: joint healing, one adapter for all of them) with the SpeechLLM's next-token loss; the
encoder, projector and every decoder weight stay frozen, so healing changes only the new
adapters.

The healed n = 0 control is the same call with nothing removed: the unpruned decoder given the
same budget (:data:`~workflow_scripts.speechllm.settings.HEAL_BUDGET`: steps, learning rate,
batch, utterances, seed, adapter shape), so a healing gain can be told from extra training."""

from __future__ import annotations

import hashlib

import torch

from workflow_scripts.speechllm.model import SpeechLLM, add_lora
from workflow_scripts.speechllm.pruning import remove_layers
from workflow_scripts.speechllm.train import fit


def heal(model: SpeechLLM, removed: list[int], task: str | list[str], feats, texts: list[str],
         heal_cfg: dict, log=None) -> SpeechLLM:  # fmt: skip
    """A healed copy of ``model`` (a SpeechLLM with a plain decoder) without decoder blocks
    ``removed`` (none: the n = 0 control): new LoRA adapters (``r``, ``alpha``, ``targets``)
    trained for ``steps`` AdamW steps on ``task`` (a list of tasks: each drawn utterance gets
    one of them uniformly, one adapter for all) with the encoder features ``feats`` of
    utterances saying ``texts``. The returned model's decoder is the peft model (adapters not
    merged, so what changed can be inspected); ``model`` is not modified."""
    tasks = [task] if isinstance(task, str) else list(task)
    decoder = remove_layers(model.decoder, removed).requires_grad_(False)
    torch.manual_seed(heal_cfg["seed"])  # the adapters' initialisation
    decoder = add_lora(decoder, {"r": heal_cfg["r"], "alpha": heal_cfg["alpha"],
                                 "targets": heal_cfg["targets"]})  # fmt: skip
    healed = SpeechLLM(decoder, model.tokenizer, model.projector,
                       {t: model.prompts[t] for t in tasks}, None,
                       model.encoder_layer)  # fmt: skip
    healed.projector.requires_grad_(False)
    spec = {k: heal_cfg[k] for k in ("steps", "lr", "batch_size", "warmup_frac", "seed")}
    fit(healed, feats, texts, spec, log=log or (lambda _m: None))
    return healed.eval()


def budget(heal_cfg: dict, utterances: int) -> dict:
    """The healing budget a healed row records: AdamW steps, batch (at most the utterances),
    learning rate, training utterances, examples seen (steps x batch), seed and LoRA rank."""
    batch = min(int(heal_cfg["batch_size"]), int(utterances))
    return {"heal_steps": int(heal_cfg["steps"]), "heal_batch_size": batch,
            "heal_lr": float(heal_cfg["lr"]), "heal_utterances": int(utterances),
            "heal_examples": int(heal_cfg["steps"]) * batch, "heal_seed": int(heal_cfg["seed"]),
            "heal_r": int(heal_cfg["r"])}  # fmt: skip


def healed_columns(scores: dict, model: SpeechLLM, seconds: float, heal_cfg: dict,
                   utterances: int) -> dict:  # fmt: skip
    """The columns of a healed state's row, in a pruning cell and a healing cell alike: its
    test ``scores`` (:func:`workflow_scripts.speechllm.metrics.scores`: WER, BLEU, sentence
    error rate), the healing time, the adapter's digest and the :func:`budget`."""
    return {"healed": True, "healed_wer": scores["wer"], "healed_bleu": scores["bleu"],
            "healed_ser": scores["ser"], "heal_seconds": seconds,
            "adapter_sha256": adapter_digest(model), **budget(heal_cfg, utterances)}  # fmt: skip


def adapter_digest(model: SpeechLLM) -> str:
    """SHA-256 of a healed model's LoRA adapter weights (names and float32 values, in name
    order): equal digests = the same adapter."""
    h = hashlib.sha256()
    for name, p in sorted(model.decoder.named_parameters()):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
