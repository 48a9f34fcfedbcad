"""One structured-pruning cell (``rules/structured.smk``): :func:`run_cell` reads the rule's
files and calls :func:`prune_cell`, which trains the gates of a copy of the fine-tuned model's
blocks on the cached states, makes them deterministic, shrinks the blocks, evaluates and times
the pruned classifier against the unpruned one, optionally fine-tunes it briefly and saves it.

Method (Wang et al., Interspeech 2023, "Task-agnostic structured pruning of speech
representation models"; DPHuBERT, Peng et al. 2023; CoFi, Xia et al. 2022): learnable gates
with hard-concrete distributions (:mod:`~workflow_scripts.structured.gates`) on

* attention heads (``heads``),
* the dimensions within each head (``head_dims``; Wang et al.'s fine-grained option: unit
  (h, i) is row i of head h in the query and value projections, with its key row and its
  out-projection column),
* FFN intermediate units (``ffn_units``),
* optionally whole sublayers (``layers``: one gate on the attention branch and one on the FFN
  branch of every block, as CoFi's z_MHA / z_FFN; both closed = the block is an identity in the
  stable-layer-norm variant, only its layer norms remain in the post-LN one).

Training is task-agnostic (:mod:`~workflow_scripts.structured.train`). Afterwards the gates are
made deterministic (DPHuBERT: per gate vector the round(expected number of zeros) smallest
gates are 0, the others keep a soft value), folded into the weights and the blocks physically
shrunk (:mod:`~workflow_scripts.structured.shrink`); the pruned blocks replace
``encoder.layers`` of the classifier (:mod:`~workflow_scripts.structured.pruned`).

Streaming: the training cache is opened as lazy row views
(:class:`~workflow_scripts.backbones.rows.CachedRows`), from which every training step reads its
random mini-batch (``os.pread``); the test clips - the evaluation set every stage tests on
(``evaluation.test_clips``; :func:`evaluation_rows`) - are read from disk one evaluation batch
at a time (``data.loader.split_rows`` + ``iter_batches``). Memory does not grow with the
number of cached clips.

Latency: the pruned against the unpruned classifier, interleaved in this process
(:func:`~workflow_scripts.core.timing.compare_latency`, fp32): ``latency_ms``,
``base_latency_ms``, ``speedup`` with its 95% interval ``speedup_lo`` / ``speedup_hi``,
``timing_precision``, ``timing_device``.

Distillation targets and pre-LN models: the student's state i is block i's raw output
(:class:`~workflow_scripts.structured.stack.GatedStack`), and the teacher's cached state i is
the same quantity (``output_hidden_states``), also for i = L: in pre-LN ("stable layer norm")
models both sides are taken before the encoder's final LayerNorm (which the pruned classifier
keeps and applies after its blocks), never the cache's ``final``. With
``distill.teacher: computed`` the training cache holds only state 0, and the teacher states
are computed from each mini-batch of it by the frozen blocks
(:class:`~workflow_scripts.structured.train.ComputedTeacher`), the same quantity.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from workflow_scripts.backbones.cachefile import CacheFile
from workflow_scripts.backbones.evaluate import accuracy_report, predict_batches
from workflow_scripts.backbones.finetune import train_classifier
from workflow_scripts.backbones.plan import resolve_finetune
from workflow_scripts.backbones.registry import count_parameters, load_classifier, pick_device
from workflow_scripts.backbones.rows import CachedRows
from workflow_scripts.core.retained import concat_predictions, predictions_frame, retained_interval
from workflow_scripts.core.timing import compare_latency
from workflow_scripts.data.loader import iter_batches, load_split, split_rows
from workflow_scripts.pruning.layers import transformer_parameters
from workflow_scripts.structured.gates import GATE_KINDS
from workflow_scripts.structured.plan import distill_layers, teacher_computed
from workflow_scripts.structured.pruned import pruned_model, save_pruned, structure_report
from workflow_scripts.structured.stack import GatedStack
from workflow_scripts.structured.train import ComputedTeacher, train_gates

Log = Callable[[str], None]
# a zero-argument callable that returns a fresh iterable of (audio (b, samples) float32,
# labels (b,) int64, ...) test batches (``data.loader.iter_batches``): the test clips,
# streamed once per evaluation
TestBatches = Callable[[], Iterable[tuple]]


def run_cell(inputs: Mapping[str, str], config_slice: dict, root: str, *, model: str,
             out_dir: str | os.PathLike, log: Log
             ) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The cell of ``model`` from the rule's files (``inputs``: ``model`` = the fine-tuned
    classifier, ``train_cache`` = its training-split cache, ``manifest``; ``root`` = the
    corpus): the cached block-0 input and teacher states of the distilled layers
    (:func:`~workflow_scripts.structured.plan.distill_layers`) read batch by batch
    (:func:`training_views`), the test clips streamed from disk, and training clips read only
    when the short fine-tune is on. Saves the pruned model to ``out_dir``; returns (the
    one-row cell table, its per-clip predictions: :func:`prune_cell`)."""
    cell = config_slice
    device = pick_device()
    classifier = load_classifier(inputs["model"]).to(device).eval()
    layers = distill_layers(cell, classifier.config.num_hidden_layers)
    computed = teacher_computed(cell)
    x0, teacher = training_views(inputs["train_cache"], [] if computed else layers,
                                 cell["train_clips"])  # fmt: skip
    if computed:
        teacher = ComputedTeacher(classifier, layers)
    manifest = pd.read_parquet(inputs["manifest"])
    test_rows = evaluation_rows(manifest, cell)
    log(f"{model}, target {cell['target']}: {len(x0)} cached training clips, distilled layers "
        f"{layers} ({'computed' if computed else 'cached'} teacher states), "
        f"{len(test_rows)} test clips, device {device}")  # fmt: skip

    def test_batches():
        return iter_batches(root, test_rows, cell["eval_batch_size"])

    def train_data():
        x, y, _ = load_split(root, manifest, "training", cell["finetune"]["train_clips"])
        log(f"short fine-tune on {len(x)} training clips")
        return x, y

    row, _history, predictions = prune_cell(classifier, cell, x0, teacher, test_batches, device,
                                            train_data, out_dir, log)  # fmt: skip
    df = pd.DataFrame([{"model": model, **row}])
    log("\n" + df.drop(columns=["per_class_accuracy"]).T.to_string())
    return df, predictions


def evaluation_rows(manifest: pd.DataFrame, cell: dict) -> pd.DataFrame:
    """The cell's test clips: the evaluation set, ``split_rows(manifest, "testing",
    cell["test_clips"])`` (the slice's ``test_clips`` is ``evaluation.test_clips``)."""
    return split_rows(manifest, "testing", cell["test_clips"])


def training_views(train_cache: str, layers: list[int], limit: int | None):
    """(state 0, {i: teacher state i}) of the first ``limit`` clips of the training cache as
    lazy row views (:class:`~workflow_scripts.backbones.rows.CachedRows`): a training step reads
    only its mini-batch. The teacher's state i is the cache's hidden state i, state L
    included (before the final LayerNorm of pre-LN models, as the student's)."""
    cache = CacheFile(train_cache)
    return CachedRows(cache, 0, limit), {i: CachedRows(cache, i, limit) for i in layers}


def array_batches(audio: np.ndarray, labels: np.ndarray, batch_size: int) -> TestBatches:
    """In-memory test clips as :data:`TestBatches` of ``batch_size`` clips."""
    return lambda: ((audio[s : s + batch_size], labels[s : s + batch_size])
                    for s in range(0, len(audio), batch_size))  # fmt: skip


def prune_cell(model, cell: dict, x0, teacher: dict, test_batches: TestBatches, device="cpu",
               train_data=None, out_dir: str | os.PathLike | None = None,
               log: Log | None = None) -> tuple[dict, list[dict], pd.DataFrame]:  # fmt: skip
    """One structured-pruning cell: train the gates of a copy of ``model``'s blocks on the
    cached states (``x0`` = hidden state 0, ``teacher`` = index -> teacher states of the
    distilled layers, arrays or :func:`training_views`; or a
    :class:`~workflow_scripts.structured.train.ComputedTeacher`, which computes them from each
    mini-batch of ``x0``), make them deterministic, shrink the
    blocks, evaluate the pruned classifier (the fine-tuned head) end to end on the test clips
    (``test_batches()``, streamed, one forward pass per batch: batches of
    ``cell["eval_batch_size"]`` clips) against the unpruned one on the same clips, time both
    interleaved (:func:`_latency`, on the first ``latency.batch_size`` test clips), optionally
    fine-tune briefly (``cell["finetune"]["steps"]`` > 0, on ``train_data()`` = training
    clips) and save the pruned model to ``out_dir``. Returns (row, per-step training
    history, per-clip predictions of every evaluated state: ``state`` = ``unpruned``,
    ``pruned`` or ``finetuned``, then ``clip``, ``predicted``, ``label``). ``retained`` has
    its paired bootstrap interval over the test clips ``retained_lo`` / ``retained_hi``
    (:func:`~workflow_scripts.core.retained.retained_interval`; ``finetuned_retained_lo`` /
    ``_hi`` likewise)."""
    log = log or (lambda _m: None)
    device = torch.device(device)
    model = model.to(device).eval()
    C = model.config.num_labels
    torch.manual_seed(cell["seed"])  # the gates' initial noise: part of the cell
    stack = GatedStack.from_model(model, gates=cell["gates"],
                                  init_log_alpha=cell["init_log_alpha"],
                                  straight_through=cell["straight_through"])  # fmt: skip
    t0 = time.perf_counter()
    history = train_gates(
        stack, x0, teacher, cell["target"], steps=cell["steps"], batch_size=cell["batch_size"],
        lr=cell["lr"], gate_lr=cell["gate_lr"], lambda_lr=cell["lambda_lr"],
        warmup_frac=cell["warmup_frac"], loss=cell["distill"]["loss"],
        cos_weight=cell["distill"]["cos_weight"], seed=cell["seed"], device=device, log=log,
        progress=True,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t0
    layers = stack.pruned_layers()
    rep = structure_report(layers, stack.total_prunable())
    log(f"achieved sparsity {rep['achieved_sparsity']:.4f}, kept heads {rep['kept_heads']}")
    pruned = pruned_model(model, layers).to(device).eval()
    base_logits, test_labels = predict_batches(model, test_batches(), device)
    logits, _ = predict_batches(pruned, test_batches(), device)
    base = accuracy_report(base_logits, test_labels, C)
    acc = accuracy_report(logits, test_labels, C)
    lat_audio = _first_clips(test_batches, cell["latency"]["batch_size"])
    lat = _latency(model, pruned, lat_audio, cell["latency"], device)
    ft = cell.get("finetune") or {"steps": 0}
    ft_acc, ft_pred = _short_finetune(pruned, ft, train_data, test_batches, device, log)
    states = {"unpruned": base_logits.argmax(1), "pruned": logits.argmax(1), "finetuned": ft_pred}
    states = {k: p for k, p in states.items() if p is not None}
    base_ok = states["unpruned"] == test_labels
    cis = {k: retained_interval(p == test_labels, base_ok) for k, p in states.items()}
    nan3 = (math.nan, math.nan, math.nan)
    row = {
        "target_sparsity": float(cell["target"]),
        "achieved_sparsity": rep["achieved_sparsity"],
        "expected_sparsity": float(stack.expected_sparsity().detach()),
        "prunable_params": rep["prunable_params"],
        "prunable_params_kept": rep["prunable_params_kept"],
        "transformer_params": transformer_parameters(pruned),
        "base_transformer_params": transformer_parameters(model),
        "total_params": count_parameters(pruned),
        "base_total_params": count_parameters(model),
        **_accuracy_columns(acc, base, ft_acc, ft),
        "retained_lo": cis["pruned"][1],
        "retained_hi": cis["pruned"][2],
        "finetuned_retained_lo": cis.get("finetuned", nan3)[1],
        "finetuned_retained_hi": cis.get("finetuned", nan3)[2],
        **lat,
        **_structure_columns(rep, cell, teacher),
        **_training_columns(cell, history, train_seconds, x0),
    }
    if out_dir is not None:
        save_pruned(pruned, out_dir, {"row": {k: v for k, v in row.items()
                                              if k != "per_class_accuracy"}})  # fmt: skip
    frames = [predictions_frame(p, test_labels, state=k) for k, p in states.items()]
    return row, history, concat_predictions(frames)


def _first_clips(test_batches: TestBatches, n: int) -> np.ndarray:
    """The first ``n`` test clips (fewer when the test set is smaller)."""
    parts, got = [], 0
    for audio, *_ in test_batches():
        parts.append(audio[: n - got])
        got += len(parts[-1])
        if got >= n:
            break
    return np.concatenate(parts)


def _latency(model, pruned, audio: np.ndarray, lat: dict, device) -> dict:
    """The pruned against the unpruned model on one batch of test clips (``audio``), timed
    interleaved in this process (:func:`~workflow_scripts.core.timing.compare_latency`, fp32):
    medians, speed-up with its 95% interval, and the conditions."""
    x_lat = torch.from_numpy(audio).to(device)
    t = compare_latency(lambda: model(x_lat), lambda: pruned(x_lat), device, lat["warmup"],
                        lat["repeats"])  # fmt: skip
    return {
        **{k: t[k] for k in ("latency_ms", "base_latency_ms", "speedup", "speedup_lo",
                             "speedup_hi", "latency_min_ms", "base_latency_min_ms")},
        "latency_batch_size": int(x_lat.shape[0]),
        "timing_precision": t["precision"],
        "timing_device": t["device"],
        "timing_clock": t["clock"],
        "latency_threads": t["threads"],
    }  # fmt: skip


def _short_finetune(pruned, ft: dict, train_data, test_batches: TestBatches, device,
                    log: Log) -> tuple[float, np.ndarray | None]:  # fmt: skip
    """(test accuracy, predicted classes per test clip) of a copy of ``pruned`` fine-tuned
    for ``ft["steps"]`` steps on ``train_data()`` ((NaN, None) when the fine-tune is off)."""
    if ft.get("steps", 0) <= 0:
        return math.nan, None
    if train_data is None:
        raise ValueError("the short fine-tune is on but no training data was given")
    x_tr, y_tr = train_data()
    tuned = copy.deepcopy(pruned)
    spec = resolve_finetune({k: v for k, v in ft.items() if k != "train_clips"}, None)
    train_classifier(tuned, x_tr, y_tr, spec, device, log=log, progress=True)
    ft_logits, test_labels = predict_batches(tuned, test_batches(), device)
    C = pruned.config.num_labels
    return accuracy_report(ft_logits, test_labels, C)["accuracy"], ft_logits.argmax(1)


def _accuracy_columns(acc: dict, base: dict, ft_acc: float, ft: dict) -> dict:
    return {
        "accuracy": acc["accuracy"],
        "ci_lo": acc["ci_lo"],
        "ci_hi": acc["ci_hi"],
        "n_utterances": acc["n"],
        "eval_clips": acc["n"],
        "per_class_accuracy": acc["per_class_accuracy"],
        "base_accuracy": base["accuracy"],
        "retained": acc["accuracy"] / base["accuracy"] if base["accuracy"] > 0 else math.nan,
        "finetuned_accuracy": ft_acc,
        "finetuned_retained": ft_acc / base["accuracy"] if base["accuracy"] > 0 else math.nan,
        "finetune_steps": int(ft.get("steps", 0)),
    }


def _structure_columns(rep: dict, cell: dict, teacher: dict) -> dict:
    return {
        "kept_heads": rep["kept_heads"],
        "kept_head_dims": rep["kept_head_dims"],
        "kept_ffn_units": rep["kept_ffn_units"],
        "mha_kept": rep["mha_kept"],
        "ffn_kept": rep["ffn_kept"],
        "gates": ",".join(k for k in GATE_KINDS if cell["gates"].get(k)),
        "straight_through": bool(cell["straight_through"]),
        "distill_layers": sorted(int(i) for i in getattr(teacher, "layers", teacher)),
    }


def _training_columns(cell: dict, history: list[dict], train_seconds: float, x0) -> dict:
    last = history[-1] if history else {}
    return {
        "steps": int(cell["steps"]),
        "train_seconds": train_seconds,
        "final_distill_loss": last.get("distill", math.nan),
        "lambda1": last.get("lambda1", math.nan),
        "lambda2": last.get("lambda2", math.nan),
        "n_train_clips": int(len(x0)),
    }
