"""One mimic cell (model x mimicker type x depth), trained from the hidden-state caches.

Stage 1 (MSE to the teacher states) and stage 2 (NLL through the fine-tuned head) read only the
cached feature projections and hidden states: fit on the training-split cache, best epoch by
the validation-split cache. Test accuracy comes from the testing-split cache (the same
float16 feature projections the mimicker was trained on), which holds the evaluation set every
stage tests on (``evaluation.test_clips``; ``eval_clips``); the mimicked model itself
(MimickedModel: audio -> front end -> mimicker -> head) runs on the raw audio of the first
testing-cache clips for the latency measurement (against the full model and the replaced
stack, interleaved: :func:`~workflow_scripts.mimic.cost.cost_report`) and for a recorded check
that it gives the same logits as the cached path. With an export folder, the mimicked model is
saved there (:func:`~workflow_scripts.mimic.model.save_mimicked`; loaded by
:func:`~workflow_scripts.mimic.model.load_mimicked`).

Streaming: the caches are opened as lazy row views (:mod:`workflow_scripts.backbones.rows`); every
pass (stage 1, stage 2 with the mimicker frozen or not, validation, test, the backbone
reference) reads one mini-batch of rows at a time and casts it to float32 on the device, so
the cell's memory does not grow with the number of cached clips (only the row indices and the
int64 labels do, 16 bytes per clip).

The last target is what the head reads: the mimicked model feeds the mimicker's last output
straight into the head, so the last output is fitted to the cache's ``"final"``
(:meth:`~workflow_scripts.backbones.cachefile.CacheFile.read_state`): the encoder's output
after its final LayerNorm for pre-LN ("stable layer norm") models, state L otherwise (there
the same tensor). Intermediate targets are hidden states by index. The fallback reference
accuracy (the head on the testing cache) reads ``"final"`` too. The cell records which in
``last_target`` (:data:`LAST_TARGET`).

:func:`run_cell` is the whole cell; the rule adapter (``scripts/mimic_cell.py``) only writes
its two frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workflow_scripts.backbones.cache import final_differs
from workflow_scripts.backbones.cachefile import CacheFile
from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.registry import load_classifier, normalize_audio, pick_device
from workflow_scripts.backbones.rows import CachedRows, StackedRows
from workflow_scripts.core.retained import predictions_frame, retained_interval
from workflow_scripts.data.loader import read_clips
from workflow_scripts.mimic.cost import cost_report
from workflow_scripts.mimic.model import (
    ClassifierHead,
    MimickedModel,
    Mimicker,
    no_mimic,
    save_mimicked,
)
from workflow_scripts.mimic.plan import NO_MIMIC
from workflow_scripts.mimic.report import curves_frame
from workflow_scripts.mimic.targets import target_layers
from workflow_scripts.mimic.train import (
    Stage1Config,
    Stage2Config,
    mimic_logits,
    mimic_metrics,
    train_stage1,
    train_stage2,
)

Log = Callable[..., object]
CACHES = ("train_cache", "val_cache", "test_cache")
# the cell's ``last_target``: what the mimicker's last output is fitted to (and what the
# fallback reference accuracy reads), by whether the model is pre-LN
LAST_TARGET = {True: "final (after the encoder's final LayerNorm)", False: "state L"}


@dataclass
class TrainData:
    """The training and validation caches as one row space, read lazily: feature projections
    (N, T, D) float16, labels (N,) int64 (in memory), one teacher view (N, T, D) per target;
    rows ``0..n_train-1`` train, the next ``n_val`` validate."""

    features: StackedRows
    labels: np.ndarray
    teacher: list[StackedRows]
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


def teacher_keys(layers: list[int], n_layers: int) -> list[int | str]:
    """The cache keys of the target layers: ``"final"`` (what the head reads) for the last
    layer ``n_layers``, the hidden-state index for the others."""
    return ["final" if i == n_layers else i for i in layers]


def open_caches(inputs: Mapping[str, str], model) -> dict[str, CacheFile]:
    """The training, validation and testing caches, checked to come from one model and, for a
    pre-LN model, to store ``final`` (without it "final" would read state L)."""
    caches = {k: CacheFile(inputs[k]) for k in CACHES}
    if len({c.metadata.get("model_sha256") for c in caches.values()}) != 1:
        raise ValueError(f"the caches {[inputs[k] for k in CACHES]} come from different models")
    if final_differs(model):
        old = [str(c.path) for c in caches.values() if "final" not in c.shapes]
        if old:
            raise ValueError(f"{old}: caches of a pre-LN model without 'final' (the encoder's "
                             "normalised output, which the head reads); rebuild them")  # fmt: skip
    return caches


def load_train_data(caches: Mapping[str, CacheFile], layers: list[int], n_layers: int,
                    dim: int, log: Log, train_clips: int | None = None) -> TrainData:  # fmt: skip
    """The training and validation caches (from one model) as one row space with the teacher
    states of ``layers`` (:func:`teacher_keys`); only the labels are read here.
    ``train_clips``: only the first that many training rows (None = all; ablations)."""
    train, val = caches["train_cache"], caches["val_cache"]

    def stacked(key):
        return StackedRows([CachedRows(train, key, train_clips), CachedRows(val, key)])

    fp = stacked("feature_projection")
    if fp.shape[-1] != dim:
        raise ValueError(f"cache hidden size {fp.shape[-1]} != model hidden size {dim}")
    train_labels = CachedRows(train, "labels", train_clips)[:]
    n_train = len(train_labels)
    labels = np.concatenate([train_labels, val.read("labels")])
    teacher = [stacked(k) for k in teacher_keys(layers, n_layers)]
    log("cache: %d training + %d validation clips, %s", n_train, val.n, fp.shape[1:])
    return TrainData(fp, labels, teacher, n_train, val.n)


# --------------------------------------------------------------------------------------------
# the mimicker, stage 1, stage 2
# --------------------------------------------------------------------------------------------
def build_mimicker(config_slice: dict, dim: int) -> Mimicker:
    """The cell's untrained mimicker (an identity for ``no_mimic``), initialised from the
    cell's seed."""
    torch.manual_seed(config_slice["seed"])
    if config_slice["kind"] == NO_MIMIC:
        return no_mimic(dim)
    spec = {**config_slice["layer"], "kind": config_slice["kind"], "depth": config_slice["depth"]}
    return Mimicker.from_spec(spec, dim)


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

    A frozen mimicker runs in stage 2 in eval mode and without gradients, batch by batch
    (nothing is precomputed for all rows)."""
    curves, s1, s2 = [], None, None
    if config_slice["kind"] != NO_MIMIC:
        st = config_slice["stage1"]
        cfg1 = Stage1Config(st["epochs"], st["lr"], st["batch_size"], config_slice["seed"])
        s1 = train_stage1(mimicker, data.features, data.teacher, data.train_idx, data.val_idx,
                          cfg1, device, log)  # fmt: skip
        curves += [{"stage": 1, **h, "best": h["epoch"] == s1["best_epoch"]} for h in s1["history"]]
    cfg2 = stage2_config(config_slice)
    if cfg2.epochs > 0 and not (cfg2.freeze_mimicker and cfg2.freeze_head):
        s2 = train_stage2(mimicker, head, data.features, data.labels, data.train_idx,
                          data.val_idx, cfg2, device, log)  # fmt: skip
        curves += [{"stage": 2, **h, "best": h["epoch"] == s2["best_epoch"]} for h in s2["history"]]
    else:
        log("stage 2 skipped (epochs 0, or mimicker and head both frozen)")
    _, val_acc = mimic_metrics(mimicker, head, data.features, data.labels, data.val_idx,
                               cfg2.batch_size, device)  # fmt: skip
    return {"stage1": s1, "stage2": s2, "curves": curves, "val_accuracy": val_acc,
            "stage2_config": cfg2}  # fmt: skip


# --------------------------------------------------------------------------------------------
# test accuracy, the backbone reference, the raw-audio check and the cost
# --------------------------------------------------------------------------------------------
def backbone_reference(model, baseline_path: str, test: CacheFile, labels, device, log: Log,
                       predictions_path: str | None = None):  # fmt: skip
    """((accuracy, ci_lo, ci_hi) of the unpruned backbone on the testing clips, where it came
    from, its predicted classes per clip or None): the baseline cell when it counts the same
    clips (split_rows' subsets are nested), with the baseline's per-clip predictions
    (``predictions_path``; None without it), else the fine-tuned head on the testing cache's
    ``"final"`` (what the head reads), read one batch at a time."""
    base = pd.read_parquet(baseline_path)
    base = base[base.split == "testing"]
    if len(base) == 1 and int(base.n.iloc[0]) == len(labels):
        ref = {k: float(base[k].iloc[0]) for k in ("accuracy", "ci_lo", "ci_hi")}
        source = "baseline cell"
        pred = None
        if predictions_path is not None:
            p = pd.read_parquet(predictions_path).sort_values("clip")
            if len(p) != len(labels) or not (p.label.to_numpy() == labels).all():
                raise ValueError(f"{predictions_path}: the baseline's predictions are not of "
                                 "the testing cache's clips")  # fmt: skip
            pred = p.predicted.to_numpy()
    else:
        full = ClassifierHead.from_model(model).to(device)
        rows = np.arange(len(labels))
        logits = mimic_logits(no_mimic(model.config.hidden_size), full,
                              CachedRows(test, "final"), rows, 128, device)  # fmt: skip
        ref = accuracy_report(logits, labels, model.config.num_labels)
        source = "testing cache"
        pred = logits.argmax(1)
    log("backbone test accuracy %.4f (%s)", ref["accuracy"], source)
    return ref, source, pred


def raw_audio_check(mm: MimickedModel, audio, paths, test: CacheFile, fp_te, device) -> dict:
    """The mimicked model on raw test audio vs the cached path (the testing cache's feature
    projections through mimicker and head) on the clips both have: how many, the largest
    absolute logit difference, and the share of equal predictions."""
    where = {p: i for i, p in enumerate(test.paths)}
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


def evaluate(model, mimicker, head, config_slice, inputs, test: CacheFile, root, device,
             log: Log) -> dict:  # fmt: skip
    """Test accuracy on the testing cache (streamed), the backbone reference, the retained
    share's paired bootstrap interval against the backbone's per-clip predictions
    (:func:`~workflow_scripts.core.retained.retained_interval`; NaN without them), the
    raw-audio check and :func:`~workflow_scripts.mimic.cost.cost_report` (on the raw audio of
    the first ``latency.batch_size`` clips of the testing cache); returns {"report",
    "reference", "reference_source", "retained" ((retained, lo, hi)), "predictions" (the
    per-clip frame), "check", "cost", "mimicked" (the MimickedModel)}."""
    batch_size = config_slice["stage2"]["batch_size"]
    fp_te, y = CachedRows(test, "feature_projection"), test.read("labels")
    logits = mimic_logits(mimicker, head, fp_te, np.arange(len(y)), batch_size, device)
    report = accuracy_report(logits, y, model.config.num_labels)
    log("test accuracy %.4f (n=%d)", report["accuracy"], report["n"])
    ref, ref_source, base_pred = backbone_reference(
        model, inputs["baseline"], test, y, device, log, inputs.get("baseline_predictions")
    )
    pred = logits.argmax(1)
    retained = (retained_interval(pred == y, base_pred == y) if base_pred is not None
                else (math.nan, math.nan, math.nan))  # fmt: skip
    lat = config_slice["latency"]
    paths = test.paths[: lat["batch_size"]]
    audio = read_clips(root, paths)
    mm = MimickedModel(model, mimicker, head).to(device).eval()
    check = raw_audio_check(mm, audio, paths, test, fp_te, device)
    log("raw audio vs cache: %s", check)
    batch = normalize_audio(torch.from_numpy(audio))
    cost = cost_report(model, mimicker, batch, device, lat["warmup"], lat["repeats"], head)
    log("cost %s", {k: v for k, v in cost.items() if k.endswith("_pct") or k.endswith("_ms")})
    return {"report": report, "reference": ref, "reference_source": ref_source,
            "retained": retained, "predictions": predictions_frame(pred, y),
            "check": check, "cost": cost, "mimicked": mm}  # fmt: skip


# --------------------------------------------------------------------------------------------
# the cell
# --------------------------------------------------------------------------------------------
def cell_row(config_slice, model, layers, source, data: TrainData, fitted, ev, device) -> dict:
    """The cell's one row (column order is the cell file's). ``target_layers`` are
    hidden-state indices; ``last_target`` says what the last one (L) was read as:
    :data:`LAST_TARGET` by whether the model is pre-LN, "none" for ``no_mimic``."""
    report, ref, s1, s2 = ev["report"], ev["reference"], fitted["stage1"], fitted["stage2"]
    cfg2 = fitted["stage2_config"]
    last = LAST_TARGET[final_differs(model)] if layers else "none"
    return {
        "model": config_slice["model"], "kind": config_slice["kind"],
        "depth": config_slice["depth"], "target_layers": layers, "target_source": source,
        "last_target": last,
        "n_layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
        **{k: report[k] for k in ("accuracy", "ci_lo", "ci_hi", "n", "per_class_accuracy")},
        "eval_clips": report["n"],
        "backbone_accuracy": ref["accuracy"], "backbone_ci_lo": ref["ci_lo"],
        "backbone_ci_hi": ref["ci_hi"], "backbone_accuracy_source": ev["reference_source"],
        "accuracy_retained": report["accuracy"] / ref["accuracy"] if ref["accuracy"] else np.nan,
        "retained_lo": ev["retained"][1], "retained_hi": ev["retained"][2],
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
    export_dir: str | None = None,
    train_clips: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train and evaluate one mimic cell; returns (the cell's one-row frame, its training
    curves, its per-clip test predictions).

    inputs: the files of :func:`workflow_scripts.mimic.plan.cell_inputs` by name (``model``,
    ``train_cache``, ``val_cache``, ``test_cache``, ``baseline``, ``baseline_predictions``
    (without it the retained interval is NaN), optionally ``blocks``);
    config_slice: :func:`~workflow_scripts.mimic.plan.cell_slice`; root: the Speech Commands
    folder the caches' clip paths are relative to; device: None = CUDA when present; log: a
    logging-style callable (``log(msg, *args)``); export_dir: where the mimicked model is
    saved (:func:`~workflow_scripts.mimic.model.save_mimicked`; None = not saved);
    train_clips: fit on the first that many cached training clips only (None = all; used by
    ``benchmarks/mimic_ablation.py``).
    """
    device = pick_device() if device is None else torch.device(device)
    model = load_classifier(inputs["model"]).eval()
    n_layers, dim = model.config.num_hidden_layers, model.config.hidden_size
    layers, source = cell_targets(config_slice, n_layers, inputs.get("blocks"), log)
    caches = open_caches(inputs, model)
    data = load_train_data(caches, layers, n_layers, dim, log, train_clips)
    mimicker = build_mimicker(config_slice, dim)
    head = ClassifierHead.from_model(model).to(device)
    fitted = fit(config_slice, mimicker, head, data, device, log)
    ev = evaluate(model, mimicker, head, config_slice, inputs, caches["test_cache"], root,
                  device, log)  # fmt: skip
    row = cell_row(config_slice, model, layers, source, data, fitted, ev, device)
    if export_dir is not None:
        info = {k: v for k, v in row.items() if k != "per_class_accuracy"}
        save_mimicked(ev["mimicked"], export_dir, {"cell": info})
        log("mimicked model exported to %s", export_dir)
    curves = curves_frame(config_slice["model"], config_slice["kind"], config_slice["depth"],
                          fitted["curves"])  # fmt: skip
    return pd.DataFrame([row]), curves, ev["predictions"]
