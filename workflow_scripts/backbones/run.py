"""The backbone stage's jobs: fine-tune one model and evaluate it (its baseline cell), and run
a fine-tuned model over one split into the hidden-state cache."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd
import torch

from workflow_scripts.backbones.cache import extract_hidden_states, write_cache
from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.finetune import save_model, train_classifier
from workflow_scripts.backbones.registry import (
    count_parameters,
    encoder_of,
    load_classifier,
    pick_device,
)
from workflow_scripts.core.provenance import canonical_json, config_hash, sha256_path
from workflow_scripts.data.loader import load_split, manifest_digest


def parameter_counts(model) -> dict[str, int]:
    """Parameters of a keyword classifier: all, transformer stack, CNN front end, head."""
    base = encoder_of(model)
    return {
        "params_total": count_parameters(model),
        "params_transformer": count_parameters(base.encoder),
        "params_feature_encoder": count_parameters(base.feature_extractor),
        "params_head": count_parameters(model.projector) + count_parameters(model.classifier),
    }


def run_finetune(
    slice_: dict, model_name: str, manifest_path: str, root: str, work: str,
    log: Callable[[str], None],
) -> tuple[torch.nn.Module, pd.DataFrame, list[dict]]:  # fmt: skip
    """Fine-tune ``slice_['source']`` on the training split and evaluate it on the validation
    and testing splits. Returns (model, baseline cell rows, training history)."""
    spec, labels = slice_["finetune"], slice_["labels"]
    manifest = pd.read_parquet(manifest_path)
    audio, y, _ = load_split(root, manifest, "training")
    log(f"fine-tuning {slice_['source']} on {len(audio)} clips, {len(labels)} classes")
    torch.manual_seed(spec["seed"])  # the fresh head's initialisation is part of the cell
    model = load_classifier(slice_["source"], labels=labels)
    device = pick_device()
    result = train_classifier(model, audio, y, spec, device, work, log)
    del audio
    params = parameter_counts(model)
    rows = []
    for split in ("validation", "testing"):
        x, yy, _ = load_split(root, manifest, split, spec.get("eval_clips"))
        report = accuracy_report(predict(model, x, device), yy, len(labels))
        log(f"{split} accuracy {report['accuracy']:.4f} (n={report['n']})")
        rows.append({"model": model_name, "split": split, **report, **params,
                     "num_layers": model.config.num_hidden_layers,
                     "finetune_seconds": result["seconds"], "finetune_steps": spec["steps"],
                     "resumed_from_step": result["resumed_from"],
                     "device": str(device)})  # fmt: skip
    df = pd.DataFrame(rows)
    df["labels"] = [labels] * len(df)
    return model, df, result["history"]


def save_finetuned(model, out_dir: str, meta: dict, manifest_path: str, history: list) -> dict:
    """Save the fine-tuned model with its provenance (the data digest added to its inputs);
    returns that provenance for the baseline cell."""
    meta = dict(meta)
    digest = manifest_digest(pd.read_parquet(manifest_path))
    meta["inputs_sha256"] = canonical_json({"data": digest, **json.loads(meta["inputs_sha256"])})
    save_model(model, out_dir, {
        "provenance.json": json.dumps(meta, indent=1, sort_keys=True),
        "training_history.json": json.dumps(history),
    })  # fmt: skip
    return meta


def run_cache(slice_: dict, model_dir: str, manifest_path: str, root: str, out: str,
              meta: dict, log: Callable[[str], None]) -> None:  # fmt: skip
    """One forward pass of the fine-tuned model over ``slice_['clips']`` clips of
    ``slice_['split']``, written to the cache file ``out`` (see :mod:`.cache`)."""
    manifest = pd.read_parquet(manifest_path)
    audio, y, clip_paths = load_split(root, manifest, slice_["split"], slice_["clips"])
    model = load_classifier(model_dir)
    arrays = extract_hidden_states(model, audio, pick_device(), slice_["batch_size"])
    log(f"cache shapes { {k: v.shape for k, v in arrays.items()} }")
    meta = {**meta, "slice_hash": config_hash(slice_), "model_sha256": sha256_path(model_dir)}
    write_cache(out, arrays, y, clip_paths, meta)
