"""The backbone stage's jobs: fine-tune one model and evaluate it (its baseline cell), and run
a fine-tuned model over one split into the hidden-state cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from workflow_scripts.backbones.cache import extract_to_cache
from workflow_scripts.backbones.clips import ClipSet
from workflow_scripts.backbones.evaluate import EVAL_BATCH_SIZE, accuracy_report, predict_batches
from workflow_scripts.backbones.finetune import release_features, save_model, train_classifier
from workflow_scripts.backbones.plan import resolve_states
from workflow_scripts.backbones.registry import (
    count_parameters,
    encoder_of,
    load_classifier,
    pick_device,
)
from workflow_scripts.core.provenance import canonical_json, config_hash, sha256_path
from workflow_scripts.core.retained import predictions_frame
from workflow_scripts.data.loader import iter_batches, split_rows


def parameter_counts(model) -> dict[str, int]:
    """Parameters of a keyword classifier: all, transformer stack, CNN front end, head."""
    base = encoder_of(model)
    return {
        "params_total": count_parameters(model),
        "params_transformer": count_parameters(base.encoder),
        "params_feature_encoder": count_parameters(base.feature_extractor),
        "params_head": count_parameters(model.projector) + count_parameters(model.classifier),
    }


def evaluation_rows(manifest: pd.DataFrame, slice_: dict, split: str) -> pd.DataFrame:
    """The clips the baseline cell evaluates on: the testing split's evaluation set (the
    slice's ``test_clips`` = ``evaluation.test_clips``, the clips every stage tests on), the
    validation split's first ``finetune.eval_clips``."""
    limit = slice_["test_clips"] if split == "testing" else slice_["finetune"].get("eval_clips")
    return split_rows(manifest, split, limit)


def run_finetune(
    slice_: dict, model_name: str, manifest_path: str, root: str, work: str,
    log: Callable[[str], None],
) -> tuple[torch.nn.Module, pd.DataFrame, list[dict], pd.DataFrame]:  # fmt: skip
    """Fine-tune ``slice_['source']`` on the training split and evaluate it on the validation
    and testing splits (:func:`evaluation_rows`), all streamed from the audio files (memory:
    batches, not splits). Returns (model, baseline cell rows with ``eval_clips`` = the clips
    each accuracy counts, training history, the per-clip predictions on the evaluation set:
    :func:`~workflow_scripts.core.retained.predictions_frame`, what every stage's retained
    interval is paired with)."""
    spec, labels = slice_["finetune"], slice_["labels"]
    manifest = pd.read_parquet(manifest_path)
    clips = ClipSet.from_rows(root, split_rows(manifest, "training"))
    log(f"fine-tuning {slice_['source']} on {len(clips)} clips, {len(labels)} classes")
    torch.manual_seed(spec["seed"])  # the fresh head's initialisation is part of the cell
    model = load_classifier(slice_["source"], labels=labels)
    device = pick_device()
    # a resumed checkpoint must come from these weights and these clips, not only settings
    src = slice_["source"]
    backbone = sha256_path(src) if Path(src).exists() else src  # a hub id: its name
    key = canonical_json({"backbone": backbone, "manifest": sha256_path(manifest_path)})
    result = train_classifier(model, clips, None, spec, device, work, log, resume_key=key)
    params = parameter_counts(model)
    rows = []
    for split in ("validation", "testing"):
        eval_rows = evaluation_rows(manifest, slice_, split)
        batches = iter_batches(root, eval_rows, EVAL_BATCH_SIZE)
        logits, y = predict_batches(model, batches, device)
        report = accuracy_report(logits, y, len(labels))
        if split == "testing":
            predictions = predictions_frame(logits.argmax(1), y)
        log(f"{split} accuracy {report['accuracy']:.4f} (n={report['n']})")
        rows.append({"model": model_name, "split": split, **report,
                     "eval_clips": len(eval_rows), **params,
                     "num_layers": model.config.num_hidden_layers,
                     "finetune_seconds": result["seconds"], "finetune_steps": spec["steps"],
                     "resumed_from_step": result["resumed_from"],
                     "device": str(device)})  # fmt: skip
    df = pd.DataFrame(rows)
    df["labels"] = [labels] * len(df)
    return model, df, result["history"], predictions


def save_finetuned(model, out_dir: str, meta: dict, manifest_path: str, history: list,
                   work: str | None = None) -> dict:  # fmt: skip
    """Save the fine-tuned model with its provenance, then delete the frozen-CNN features of
    its work folder ``work``; returns that provenance for the baseline cell. (The audio is
    covered by the manifest input, which holds every clip's SHA-256.)"""
    meta = dict(meta)
    save_model(model, out_dir, {
        "provenance.json": json.dumps(meta, indent=1, sort_keys=True),
        "training_history.json": json.dumps(history),
    })  # fmt: skip
    release_features(work)
    return meta


def run_cache(slice_: dict, model_dir: str, manifest_path: str, root: str, out: str,
              meta: dict, log: Callable[[str], None],
              picked: Callable[[int], list[int]] | None = None) -> dict:  # fmt: skip
    """One forward pass of the fine-tuned model over ``slice_['clips']`` clips of
    ``slice_['split']``, streamed batch by batch into the cache file ``out`` (see
    :mod:`.cachefile`), storing what ``slice_['store']`` says. A store with
    ``block_targets`` (the mimickers' targets from the similarity blocks) also stores the
    states ``picked(n_layers)`` gives (the cache job's script passes
    :func:`workflow_scripts.mimic.targets.block_target_states` on the blocks tables)."""
    rows = split_rows(pd.read_parquet(manifest_path), slice_["split"], slice_["clips"])
    model = load_classifier(model_dir)
    store = slice_["store"]
    n_layers = model.config.num_hidden_layers
    states = resolve_states(store["states"], n_layers)
    if store.get("block_targets"):
        if picked is None:
            raise ValueError("this cache stores the mimickers' block targets: pass `picked`")
        targets = picked(n_layers)
        log(f"mimic targets from the similarity blocks: {targets}")
        states = sorted(set(states) | set(targets))
    log(f"{len(rows)} clips of {slice_['split']}; states {states}, feature projection "
        f"{store['feature_projection']}")  # fmt: skip
    meta = {**meta, "slice_hash": config_hash(slice_), "model_sha256": sha256_path(model_dir)}
    batches = iter_batches(root, rows, slice_["batch_size"])
    return extract_to_cache(model, batches, list(rows.path), out, states,
                            store["feature_projection"], meta, pick_device())  # fmt: skip
