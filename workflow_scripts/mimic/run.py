"""One mimic cell (model x mimicker type x depth), trained from the hidden-state caches.

Stage 1 (MSE to the teacher states) and stage 2 (NLL through the fine-tuned head) read only the
cached feature projections and hidden states: fit on the training-split cache, best epoch by
the validation-split cache. Test accuracy comes from the testing-split cache (the same
float16 feature projections the mimicker was trained on); the mimicked model itself
(MimickedModel: audio -> front end -> mimicker -> head) runs on raw test audio for the latency
measurement and for a recorded check that it gives the same logits as the cached path.

:func:`run_cell` is the whole cell; the rule adapter (``scripts/mimic_cell.py``) only writes
its two frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workflow_scripts.backbones.cache import cache_info, read_array, read_layers
from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.registry import load_classifier, normalize_audio, pick_device
from workflow_scripts.data.loader import load_split
from workflow_scripts.mimic.cost import cost_report
from workflow_scripts.mimic.model import ClassifierHead, MimickedModel, Mimicker, no_mimic
from workflow_scripts.mimic.plan import NO_MIMIC
from workflow_scripts.mimic.report import curves_frame
from workflow_scripts.mimic.targets import target_layers
from workflow_scripts.mimic.train import (
    Stage1Config,
    Stage2Config,
    frozen_outputs,
    mimic_logits,
    train_stage1,
    train_stage2,
)

Log = Callable[..., object]


@dataclass
class TrainData:
    """The training and validation caches stacked: feature projections (N, T, D) float16,
    labels (N,), one teacher array (N, T, D) per target layer; rows ``0..n_train-1`` train,
    the next ``n_val`` validate."""

    features: np.ndarray | None
    labels: np.ndarray | None
    teacher: list[np.ndarray]
    n_train: int
    n_val: int

    @property
    def train_idx(self) -> np.ndarray:
        return np.arange(self.n_train)

    @property
    def val_idx(self) -> np.ndarray:
        return np.arange(self.n_train, self.n_train + self.n_val)


def print_log(msg: str, *args) -> None:
    """A ``logging``-style log callable that prints."""
    print(msg % args if args else msg)


# --------------------------------------------------------------------------------------------
# targets and cached data (no backbone forward pass: training and testing use caches)
# --------------------------------------------------------------------------------------------
def cell_targets(config_slice: dict, n_layers: int, blocks_path: str | None, log: Log):
    """(target layers, how they were chosen): none for ``no_mimic``; else
    :func:`~workflow_scripts.mimic.targets.target_layers` with the model's blocks table."""
    kind, depth = config_slice["kind"], config_slice["depth"]
    blocks = pd.read_csv(blocks_path) if blocks_path is not None else None
    if kind == NO_MIMIC:
        layers, source = [], "none"
    else:
        layers, source = target_layers(
            depth, n_layers, config_slice["model"], config_slice.get("targets"), blocks
        )
    log("target layers %s (%s)", layers, source)
    return layers, source


def load_train_data(inputs: Mapping[str, str], layers: list[int], dim: int, log: Log) -> TrainData:
    """The training and validation caches (from one model) stacked, with the teacher states of
    ``layers``."""
    train, val = inputs["train_cache"], inputs["val_cache"]
    caches = (train, val, inputs["test_cache"])
    if len({cache_info(p)["metadata"].get("model_sha256") for p in caches}) != 1:
        raise ValueError(f"the caches {caches} come from different models")
    n_tr = cache_info(train)["shapes"]["labels"][0]
    fp = np.concatenate([read_array(p, "feature_projection") for p in (train, val)])
    labels = np.concatenate([read_array(p, "labels") for p in (train, val)])
    if fp.shape[-1] != dim:
        raise ValueError(f"cache hidden size {fp.shape[-1]} != model hidden size {dim}")
    teacher = []
    if layers:
        tr, va = read_layers(train, layers), read_layers(val, layers)
        teacher = [np.concatenate([a, b]) for a, b in zip(tr, va, strict=True)]
        del tr, va
    data = TrainData(fp, labels, teacher, int(n_tr), len(fp) - int(n_tr))
    log("cache: %d training + %d validation clips, %s", n_tr, len(data.val_idx), fp.shape[1:])
    return data


# --------------------------------------------------------------------------------------------
# the mimicker, stage 1, stage 2
# --------------------------------------------------------------------------------------------
def build_mimicker(config_slice: dict, dim: int) -> Mimicker:
    """The cell's untrained mimicker (an identity for ``no_mimic``), initialised from the
    cell's seed."""
    torch.manual_seed(config_slice["seed"])
    if config_slice["kind"] == NO_MIMIC:
        return no_mimic(dim)
    spec = config_slice["layer"]
    return Mimicker(config_slice["kind"], config_slice["depth"], dim, spec.get("width", 64),
                    spec.get("heads", 8), spec.get("ffn"), spec.get("dropout", 0.1))  # fmt: skip


def stage2_config(config_slice: dict) -> Stage2Config:
    """Stage 2's settings; ``no_mimic`` always trains the head of its identity mimicker."""
    st, no = config_slice["stage2"], config_slice["kind"] == NO_MIMIC
    return Stage2Config(st["epochs"], st["lr"], st["batch_size"], config_slice["seed"],
                        freeze_mimicker=True if no else st["freeze_mimicker"],
                        freeze_head=False if no else st["freeze_head"])  # fmt: skip


def fit(config_slice, mimicker, head, data: TrainData, device, log: Log) -> dict:
    """Stage 1 (not for ``no_mimic``) and stage 2 (unless it has 0 epochs or nothing to
    train) in place; returns {"stage1", "stage2" (their reports or None), "curves",
    "val_accuracy" (of the final mimicker and head), "stage2_config"}.

    With a frozen mimicker, stage 2 trains the head on the mimicker's precomputed outputs
    (:func:`~workflow_scripts.mimic.train.frozen_outputs`) through an identity mimicker,
    exactly as if the mimicker ran in every epoch."""
    kind, dim = config_slice["kind"], data.features.shape[-1]
    curves, s1, s2 = [], None, None
    if kind != NO_MIMIC:
        st = config_slice["stage1"]
        cfg1 = Stage1Config(st["epochs"], st["lr"], st["batch_size"], config_slice["seed"])
        s1 = train_stage1(mimicker, data.features, data.teacher, data.train_idx, data.val_idx,
                          cfg1, device, log)  # fmt: skip
        curves += [{"stage": 1, **h, "best": h["epoch"] == s1["best_epoch"]} for h in s1["history"]]
    data.teacher = []
    cfg2 = stage2_config(config_slice)
    s2_mim, s2_in = mimicker, data.features
    if cfg2.epochs > 0 and not (cfg2.freeze_mimicker and cfg2.freeze_head):
        if cfg2.freeze_mimicker and kind != NO_MIMIC:  # what a frozen mimicker feeds the head
            s2_mim = no_mimic(dim)
            s2_in = frozen_outputs(mimicker, data.features, cfg2.batch_size, device)
        s2 = train_stage2(s2_mim, head, s2_in, data.labels, data.train_idx, data.val_idx, cfg2,
                          device, log)  # fmt: skip
        curves += [{"stage": 2, **h, "best": h["epoch"] == s2["best_epoch"]} for h in s2["history"]]
    else:
        log("stage 2 skipped (epochs 0, or mimicker and head both frozen)")
    val_logits = mimic_logits(s2_mim, head, s2_in, data.val_idx, cfg2.batch_size, device)
    val_acc = float((val_logits.argmax(1) == data.labels[data.val_idx]).mean())
    return {"stage1": s1, "stage2": s2, "curves": curves, "val_accuracy": val_acc,
            "stage2_config": cfg2}  # fmt: skip


# --------------------------------------------------------------------------------------------
# test accuracy, the backbone reference, the raw-audio check and the cost
# --------------------------------------------------------------------------------------------
def backbone_reference(model, baseline_path: str, test_cache: str, labels, device, log: Log):
    """(accuracy, ci_lo, ci_hi) of the unpruned backbone on the testing clips and where it came
    from: the baseline cell when it counts the same clips (load_split's subsets are nested),
    else the fine-tuned head on the testing cache's last layer."""
    base = pd.read_parquet(baseline_path)
    base = base[base.split == "testing"]
    if len(base) == 1 and int(base.n.iloc[0]) == len(labels):
        ref = {k: float(base[k].iloc[0]) for k in ("accuracy", "ci_lo", "ci_hi")}
        source = "baseline cell"
    else:
        n_layers, dim = model.config.num_hidden_layers, model.config.hidden_size
        last = read_layers(test_cache, [n_layers])[0]
        full = ClassifierHead.from_model(model).to(device)
        rows = np.arange(len(labels))
        logits = mimic_logits(no_mimic(dim), full, last, rows, 128, device)
        ref = accuracy_report(logits, labels, model.config.num_labels)
        source = "testing cache"
    log("backbone test accuracy %.4f (%s)", ref["accuracy"], source)
    return ref, source


def raw_audio_check(mm: MimickedModel, audio, paths, test_cache: str, fp_te, device) -> dict:
    """The mimicked model on raw test audio vs the cached path (the testing cache's feature
    projections through mimicker and head) on the clips both have: how many, the largest
    absolute logit difference, and the share of equal predictions."""
    where = {p: i for i, p in enumerate(json.loads(cache_info(test_cache)["metadata"]["paths"]))}
    both = [i for i, p in enumerate(paths) if p in where]
    e2e = predict(mm, audio[both], device)
    rows = [where[paths[i]] for i in both]
    via_cache = mimic_logits(mm.mimicker, mm.head, fp_te, rows, 128, device)
    return {
        "raw_audio_check_clips": len(both),
        "raw_audio_check_max_abs_diff": float(np.abs(e2e - via_cache).max()) if both else np.nan,
        "raw_audio_check_agreement": float((e2e.argmax(1) == via_cache.argmax(1)).mean())
        if both
        else np.nan,
    }


def evaluate(model, mimicker, head, config_slice, inputs, root, device, log: Log) -> dict:
    """Test accuracy on the testing cache, the backbone reference, the raw-audio check and
    :func:`~workflow_scripts.mimic.cost.cost_report` (on the first ``latency.batch_size``
    testing clips); returns {"report", "reference", "reference_source", "check", "cost"}."""
    test_cache, batch_size = inputs["test_cache"], config_slice["stage2"]["batch_size"]
    fp_te, y = read_array(test_cache, "feature_projection"), read_array(test_cache, "labels")
    logits = mimic_logits(mimicker, head, fp_te, np.arange(len(y)), batch_size, device)
    report = accuracy_report(logits, y, model.config.num_labels)
    log("test accuracy %.4f (n=%d)", report["accuracy"], report["n"])
    ref, ref_source = backbone_reference(model, inputs["baseline"], test_cache, y, device, log)
    lat = config_slice["latency"]
    manifest = pd.read_parquet(inputs["manifest"])
    audio, _, paths = load_split(root, manifest, "testing", lat["batch_size"])
    mm = MimickedModel(model, mimicker, head).to(device).eval()
    check = raw_audio_check(mm, audio, paths, test_cache, fp_te, device)
    log("raw audio vs cache: %s", check)
    del fp_te
    batch = normalize_audio(torch.from_numpy(audio))
    cost = cost_report(model, mimicker, batch, device, lat["warmup"], lat["repeats"], head)
    log("cost %s", {k: v for k, v in cost.items() if k.endswith("_pct") or k.endswith("_ms")})
    return {"report": report, "reference": ref, "reference_source": ref_source,
            "check": check, "cost": cost}  # fmt: skip


# --------------------------------------------------------------------------------------------
# the cell
# --------------------------------------------------------------------------------------------
def cell_row(config_slice, model, layers, source, data: TrainData, fitted, ev, device) -> dict:
    """The cell's one row (column order is the cell file's)."""
    report, ref, s1, s2 = ev["report"], ev["reference"], fitted["stage1"], fitted["stage2"]
    cfg2 = fitted["stage2_config"]
    return {
        "model": config_slice["model"], "kind": config_slice["kind"],
        "depth": config_slice["depth"], "target_layers": layers, "target_source": source,
        "n_layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
        **{k: report[k] for k in ("accuracy", "ci_lo", "ci_hi", "n", "per_class_accuracy")},
        "backbone_accuracy": ref["accuracy"], "backbone_ci_lo": ref["ci_lo"],
        "backbone_ci_hi": ref["ci_hi"], "backbone_accuracy_source": ev["reference_source"],
        "accuracy_retained": report["accuracy"] / ref["accuracy"] if ref["accuracy"] else np.nan,
        "val_accuracy": fitted["val_accuracy"], "train_clips": data.n_train,
        "val_clips": data.n_val, **ev["check"],
        "stage1_best_epoch": s1["best_epoch"] if s1 else 0,
        "stage1_best_val_loss": s1["best_val_loss"] if s1 else np.nan,
        "stage1_seconds": s1["seconds"] if s1 else 0.0,
        "stage2_best_epoch": s2["best_epoch"] if s2 else 0,
        "stage2_best_val_accuracy": s2["best_val_accuracy"] if s2 else np.nan,
        "stage2_seconds": s2["seconds"] if s2 else 0.0,
        "freeze_mimicker": cfg2.freeze_mimicker, "freeze_head": cfg2.freeze_head,
        **{k: v for k, v in ev["cost"].items() if k != "device"}, "device": str(device),
    }  # fmt: skip


def run_cell(
    inputs: Mapping[str, str],
    config_slice: dict,
    root: str,
    device: torch.device | str | None = None,
    log: Log = print_log,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and evaluate one mimic cell; returns (the cell's one-row frame, its training
    curves).

    inputs: the files of :func:`workflow_scripts.mimic.plan.cell_inputs` by name (``model``,
    ``train_cache``, ``val_cache``, ``test_cache``, ``manifest``, ``baseline``, optionally
    ``blocks``); config_slice: :func:`~workflow_scripts.mimic.plan.cell_slice`; root: the
    Speech Commands folder the manifest's paths are relative to; device: None = CUDA when
    present; log: a logging-style callable (``log(msg, *args)``).
    """
    device = pick_device() if device is None else torch.device(device)
    model = load_classifier(inputs["model"]).eval()
    n_layers, dim = model.config.num_hidden_layers, model.config.hidden_size
    layers, source = cell_targets(config_slice, n_layers, inputs.get("blocks"), log)
    data = load_train_data(inputs, layers, dim, log)
    mimicker = build_mimicker(config_slice, dim)
    head = ClassifierHead.from_model(model).to(device)
    fitted = fit(config_slice, mimicker, head, data, device, log)
    data.features = data.labels = None  # free the training caches before testing
    ev = evaluate(model, mimicker, head, config_slice, inputs, root, device, log)
    row = cell_row(config_slice, model, layers, source, data, fitted, ev, device)
    curves = curves_frame(config_slice["model"], config_slice["kind"], config_slice["depth"],
                          fitted["curves"])  # fmt: skip
    return pd.DataFrame([row]), curves
