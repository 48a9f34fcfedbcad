"""The pruned model: the classifier with its blocks replaced by physically pruned
StructuredLayers, its structure report, and saving / loading it (weights in safetensors plus
the per-block structure, rebuilt on the unpruned checkpoint's architecture)."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

from workflow_scripts.backbones.registry import encoder_of, load_classifier
from workflow_scripts.core.files import apply_umask
from workflow_scripts.structured.layers import StructuredLayer, install_layers, structured_layers


def pruned_model(model, layers: list[StructuredLayer]):
    """A deep copy of the classifier ``model`` whose blocks are ``layers`` (the head, front
    end and positional convolution unchanged). ``config.structured_pruning`` records the
    structure."""
    new = copy.deepcopy(model)
    install_layers(new, [copy.deepcopy(lay) for lay in layers])
    new.config.structured_pruning = [lay.structure() for lay in layers]
    return new


def structure_report(layers: list[StructuredLayer], total_prunable: int) -> dict:
    """Kept heads / head dimensions / FFN units per block and the achieved sparsity."""
    kept = sum(lay.prunable_parameters() for lay in layers)
    return {
        "kept_heads": [len(lay.heads) if lay.mha else 0 for lay in layers],
        "kept_head_dims": [sum(len(d) for d in lay.dims) if lay.mha else 0 for lay in layers],
        "kept_ffn_units": [lay.intermediate_dense.out_features if lay.ffn else 0 for lay in layers],
        "mha_kept": [bool(lay.mha) for lay in layers],
        "ffn_kept": [bool(lay.ffn) for lay in layers],
        "prunable_params": int(total_prunable),
        "prunable_params_kept": int(kept),
        "achieved_sparsity": 1.0 - kept / total_prunable if total_prunable else math.nan,
    }


def save_pruned(model, out_dir: str | os.PathLike, extra: dict | None = None) -> None:
    """Weights (safetensors), the per-block structure and the config of a pruned model;
    :func:`load_pruned` rebuilds it from the unpruned checkpoint's architecture."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    layers = encoder_of(model).encoder.layers
    info = {"structure": [lay.structure() for lay in layers], **(extra or {})}
    (out / "structure.json").write_text(json.dumps(info, indent=1))
    model.config.to_json_file(str(out / "config.json"))
    apply_umask(out)  # safetensors writes 0600: the umask's permissions, as the parquet cells


def load_pruned(out_dir: str | os.PathLike, base_model_dir: str | os.PathLike | None = None):
    """The pruned classifier saved by :func:`save_pruned`: the architecture of its own
    ``config.json`` (or of the unpruned fine-tuned model ``base_model_dir``), built without
    weights, its blocks shrunk to the saved structure, then every weight loaded from
    ``model.safetensors`` (strict). A plain ``from_pretrained`` cannot load it: the blocks
    keep different heads, head dimensions and FFN widths, which a transformers config (one
    ``num_attention_heads``, one ``intermediate_size``) cannot express."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForAudioClassification

    out = Path(out_dir)
    info = json.loads((out / "structure.json").read_text())
    if base_model_dir is None:
        cfg = AutoConfig.from_pretrained(str(out))
        model = AutoModelForAudioClassification.from_config(cfg)
    else:
        model = load_classifier(str(base_model_dir))
    layers = [lay.shrink_to(s) for lay, s in zip(structured_layers(model), info["structure"],
                                                 strict=True)]  # fmt: skip
    install_layers(model, layers)
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return model.eval()
