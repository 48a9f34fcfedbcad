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
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch

from workflow_scripts.backbones.cache import read_layers
from workflow_scripts.backbones.evaluate import accuracy_report, autocast, predict
from workflow_scripts.backbones.finetune import train_classifier
from workflow_scripts.backbones.plan import resolve_finetune
from workflow_scripts.backbones.registry import count_parameters, load_classifier, pick_device
from workflow_scripts.core.timing import measure_latency
from workflow_scripts.data.loader import load_split
from workflow_scripts.pruning.layers import transformer_parameters
from workflow_scripts.structured.gates import GATE_KINDS
from workflow_scripts.structured.plan import distill_layers
from workflow_scripts.structured.pruned import pruned_model, save_pruned, structure_report
from workflow_scripts.structured.stack import GatedStack
from workflow_scripts.structured.train import train_gates

Log = Callable[[str], None]


def run_cell(inputs: Mapping[str, str], config_slice: dict, root: str, *, model: str,
             out_dir: str | os.PathLike, log: Log) -> pd.DataFrame:  # fmt: skip
    """The cell of ``model`` from the rule's files (``inputs``: ``model`` = the fine-tuned
    classifier, ``train_cache`` = its training-split cache, ``manifest``; ``root`` = the
    corpus): the cached block-0 input and teacher states of the distilled layers
    (:func:`~workflow_scripts.structured.plan.distill_layers`), the test clips, and training
    clips read only when the short fine-tune is on. Saves the pruned model to ``out_dir``;
    returns the one-row cell table."""
    cell = config_slice
    device = pick_device()
    classifier = load_classifier(inputs["model"]).to(device).eval()
    layers = distill_layers(cell, classifier.config.num_hidden_layers)
    H = read_layers(inputs["train_cache"], [0, *layers], limit=cell["train_clips"])
    x0, teacher = H[0], {i: H[k + 1] for k, i in enumerate(layers)}
    manifest = pd.read_parquet(inputs["manifest"])
    audio, labels, _ = load_split(root, manifest, "testing", cell["test_clips"])
    log(f"{model}, target {cell['target']}: {len(x0)} cached training clips, distilled layers "
        f"{layers}, {len(audio)} test clips, device {device}")  # fmt: skip

    def train_data():
        x, y, _ = load_split(root, manifest, "training", cell["finetune"]["train_clips"])
        log(f"short fine-tune on {len(x)} training clips")
        return x, y

    row, _history = prune_cell(classifier, cell, x0, teacher, audio, labels, device, train_data,
                               out_dir, log)  # fmt: skip
    df = pd.DataFrame([{"model": model, **row}])
    log("\n" + df.drop(columns=["per_class_accuracy"]).T.to_string())
    return df


def prune_cell(model, cell: dict, x0: np.ndarray, teacher: dict[int, np.ndarray],
               test_audio: np.ndarray, test_labels: np.ndarray, device="cpu",
               train_data=None, out_dir: str | os.PathLike | None = None,
               log: Log | None = None) -> tuple[dict, list[dict]]:  # fmt: skip
    """One structured-pruning cell in memory: train the gates of a copy of ``model``'s blocks
    on the cached states (``x0`` = hidden state 0, ``teacher`` = index -> teacher states of the
    distilled layers), make them deterministic, shrink the blocks, evaluate the pruned
    classifier (the fine-tuned head) end to end on the test clips against the unpruned one on
    the same clips, time both (``timing.measure_latency``), optionally fine-tune briefly
    (``cell["finetune"]["steps"]`` > 0, on ``train_data()`` = training clips) and save the
    pruned model to ``out_dir``. Returns (row, per-step training history)."""
    log = log or (lambda _m: None)
    device = torch.device(device)
    model = model.to(device).eval()
    C = model.config.num_labels
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
    bs = cell["eval_batch_size"]
    base = accuracy_report(predict(model, test_audio, device, bs), test_labels, C)
    acc = accuracy_report(predict(pruned, test_audio, device, bs), test_labels, C)
    lat = _latency(model, pruned, test_audio, cell["latency"], device)
    ft = cell.get("finetune") or {"steps": 0}
    ft_acc = _short_finetune(pruned, ft, train_data, test_audio, test_labels, bs, device, log)
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
        **lat,
        **_structure_columns(rep, cell, teacher),
        **_training_columns(cell, history, train_seconds, x0),
    }
    if out_dir is not None:
        save_pruned(pruned, out_dir, {"row": {k: v for k, v in row.items()
                                              if k != "per_class_accuracy"}})  # fmt: skip
    return row, history


def _latency(model, pruned, test_audio: np.ndarray, lat: dict, device) -> dict:
    """Median forward time of one batch of test clips, unpruned and pruned, and the speedup."""
    x_lat = torch.from_numpy(test_audio[: lat["batch_size"]]).to(device)

    def timed(m):
        def fn():
            with autocast(device):
                return m(x_lat)

        return measure_latency(fn, device, lat["warmup"], lat["repeats"])["median_ms"]

    base_ms, ms = timed(model), timed(pruned)
    return {
        "latency_ms": ms,
        "base_latency_ms": base_ms,
        "speedup": base_ms / ms if ms > 0 else math.nan,
        "latency_batch_size": int(x_lat.shape[0]),
        "latency_device": str(device),
        "latency_threads": torch.get_num_threads(),
    }


def _short_finetune(pruned, ft: dict, train_data, test_audio, test_labels, bs: int, device,
                    log: Log) -> float:  # fmt: skip
    """Test accuracy of a copy of ``pruned`` fine-tuned for ``ft["steps"]`` steps on
    ``train_data()`` (NaN when the fine-tune is off)."""
    if ft.get("steps", 0) <= 0:
        return math.nan
    if train_data is None:
        raise ValueError("the short fine-tune is on but no training data was given")
    x_tr, y_tr = train_data()
    tuned = copy.deepcopy(pruned)
    spec = resolve_finetune({k: v for k, v in ft.items() if k != "train_clips"}, None)
    train_classifier(tuned, x_tr, y_tr, spec, device, log=log, progress=True)
    ft_logits = predict(tuned, test_audio, device, bs)
    C = pruned.config.num_labels
    return accuracy_report(ft_logits, test_labels, C)["accuracy"]


def _accuracy_columns(acc: dict, base: dict, ft_acc: float, ft: dict) -> dict:
    return {
        "accuracy": acc["accuracy"],
        "ci_lo": acc["ci_lo"],
        "ci_hi": acc["ci_hi"],
        "n_utterances": acc["n"],
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
        "distill_layers": sorted(int(i) for i in teacher),
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
