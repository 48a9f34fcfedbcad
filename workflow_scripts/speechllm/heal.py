"""LoRA healing of a decoder-pruned SpeechLLM (Moumen et al.): new LoRA adapters on the
remaining decoder blocks, trained on training-split utterances of one task with the
SpeechLLM's next-token loss; the encoder, projector and every decoder weight stay frozen, so
healing changes only the new adapters."""

from __future__ import annotations

import torch

from workflow_scripts.speechllm.model import SpeechLLM, add_lora
from workflow_scripts.speechllm.pruning import remove_layers
from workflow_scripts.speechllm.train import fit


def heal(model: SpeechLLM, removed: list[int], task: str, feats, texts: list[str], heal_cfg: dict,
         log=None) -> SpeechLLM:  # fmt: skip
    """A healed copy of ``model`` (a SpeechLLM with a plain decoder) without decoder blocks
    ``removed``: new LoRA adapters (``r``, ``alpha``, ``targets``) trained for ``steps`` AdamW
    steps on ``task`` with the encoder features ``feats`` of utterances saying ``texts``. The
    returned model's decoder is the peft model (adapters not merged, so what changed can be
    inspected); ``model`` is not modified."""
    decoder = remove_layers(model.decoder, removed).requires_grad_(False)
    torch.manual_seed(heal_cfg["seed"])  # the adapters' initialisation
    decoder = add_lora(decoder, {"r": heal_cfg["r"], "alpha": heal_cfg["alpha"],
                                 "targets": heal_cfg["targets"]})  # fmt: skip
    healed = SpeechLLM(decoder, model.tokenizer, model.projector, {task: model.prompts[task]},
                       None, model.encoder_layer)  # fmt: skip
    healed.projector.requires_grad_(False)
    spec = {k: heal_cfg[k] for k in ("steps", "lr", "batch_size", "warmup_frac", "seed")}
    fit(healed, feats, texts, spec, log=log or (lambda _m: None))
    return healed.eval()
