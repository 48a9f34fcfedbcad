"""Training a mimicker from cached features: stage 1 (MSE to teacher states) and stage 2
(cross-entropy through the fine-tuned head), and the logits of the mimicked path.

* Stage 1 (:func:`train_stage1`): sum over targets of the MSE to cached teacher states, Adam,
  the state with the lowest validation loss is kept. No backbone forward pass: inputs and
  targets come from a cache.
* Stage 2 (:func:`train_stage2`): cross-entropy (NLL) of the fine-tuned model's own head
  (projector, mean over frames, classifier; :class:`~workflow_scripts.mimic.model.ClassifierHead`)
  on the mimicker's last output; the mimicker is frozen by default, the head trainable by
  default.

Each stage's settings are one small dataclass (:class:`Stage1Config`, :class:`Stage2Config`);
the data (arrays and row indices), the device and the log callable are separate arguments.

Data are array-likes of rows: numpy, memmap or torch arrays, or the lazy views of a cache
file (:mod:`workflow_scripts.backbones.rows`). Every pass indexes them one mini-batch at a time
(rows in sorted order), casts the batch to float32 on the device, and keeps per-batch sums
only (losses, correct counts), so memory is one batch whatever the number of rows (apart from
the row indices and the int64 labels). A frozen mimicker runs in eval mode in every batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.mimic.model import ClassifierHead, Mimicker

Log = Callable[[str], object]


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1 settings: ``epochs`` (>= 1), Adam's ``lr``, ``batch_size``, and the ``seed`` of
    torch and of the batch shuffling."""

    epochs: int
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0


@dataclass(frozen=True)
class Stage2Config:
    """Stage 2 settings: as :class:`Stage1Config`, plus whether the mimicker and the head are
    frozen (not updated, eval mode; weights stay bit-identical)."""

    epochs: int
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    freeze_mimicker: bool = True
    freeze_head: bool = False


# --------------------------------------------------------------------------------------------
# batching helpers
# --------------------------------------------------------------------------------------------
def _as_index(idx, n: int, name: str) -> np.ndarray:
    a = np.asarray(idx)
    if a.dtype == bool:
        if a.shape != (n,):
            raise ValueError(f"{name}: boolean mask of shape {a.shape}, expected ({n},)")
        a = np.flatnonzero(a)
    a = a.astype(np.int64).ravel()
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name}: indices out of range 0..{n - 1}")
    return a


def _take(arr, idx: np.ndarray, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Rows ``idx`` (sorted) of an array-like (numpy/memmap/torch array, or a
    :mod:`~workflow_scripts.backbones.rows` view: read now) as a ``dtype`` tensor on ``device``."""
    if isinstance(arr, torch.Tensor):
        t = arr[torch.from_numpy(idx).to(arr.device)]
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr[idx]))
    return t.to(device=device, dtype=dtype, non_blocking=True)


def _batches(idx: np.ndarray, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(idx) if rng is not None else idx
    for s in range(0, len(order), batch_size):
        yield np.sort(order[s : s + batch_size])


def _snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@contextmanager
def _frozen(module: nn.Module, frozen: bool):
    """Temporarily turn off ``requires_grad`` of ``module`` when ``frozen``."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    if frozen:
        for p, _ in saved:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


def _optimise(opt, loss: torch.Tensor) -> float:
    """One optimiser step on ``loss``; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _check_inputs(inputs, arrays: Sequence, names: Sequence[str]) -> int:
    n = len(inputs)
    for a, name in zip(arrays, names, strict=True):
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} rows, inputs {n}")
    return n


def _check_split(train_idx, val_idx, n: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows as index arrays; both non-empty, ``epochs`` >= 1."""
    tr = _as_index(train_idx, n, "train_idx")
    va = _as_index(val_idx, n, "val_idx")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError("train_idx and val_idx must both be non-empty")
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    return tr, va


@torch.no_grad()
def stage1_loss(
    mimicker: Mimicker,
    inputs,
    targets: Sequence,
    idx,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> tuple[float, list[float]]:
    """(sum over targets, per-target) mean squared error over the rows ``idx`` (eval mode)."""
    device = torch.device(device)
    idx = _as_index(idx, len(inputs), "idx")
    mimicker.eval()
    sse = [0.0] * len(targets)
    count = 0
    for b in _batches(idx, batch_size, None):
        with autocast(device):
            preds = mimicker(_take(inputs, b, device))
        for k, (p, t) in enumerate(zip(preds, targets, strict=True)):
            sse[k] += float(F.mse_loss(p.float(), _take(t, b, device), reduction="sum"))
        count += preds[0].numel()
    per = [s / max(count, 1) for s in sse]
    return float(sum(per)), per


# --------------------------------------------------------------------------------------------
# stage 1
# --------------------------------------------------------------------------------------------
def _stage1_targets(mimicker: Mimicker, inputs, targets: Sequence) -> tuple[list, int]:
    """The target arrays as a list, checked against the mimicker's outputs and the inputs'
    rows and shape; returns (targets, number of rows)."""
    targets = list(targets)
    if len(targets) != mimicker.n_outputs:
        raise ValueError(
            f"mimicker has {mimicker.n_outputs} output(s) but {len(targets)} target array(s)"
        )
    n = _check_inputs(inputs, targets, [f"targets[{k}]" for k in range(len(targets))])
    for k, t in enumerate(targets):
        if tuple(t.shape[1:]) != tuple(inputs.shape[1:]):
            raise ValueError(f"targets[{k}] has shape {tuple(t.shape)}, inputs {inputs.shape}")
    return targets, n


def _stage1_epoch(mimicker, opt, inputs, targets, tr, batch_size, rng, device) -> float:
    """One shuffled pass over the training rows; the mean training loss per row."""
    mimicker.train()
    total, seen = 0.0, 0
    for b in _batches(tr, batch_size, rng):
        x = _take(inputs, b, device)
        with autocast(device):
            preds = mimicker(x)
        loss = sum(
            F.mse_loss(p.float(), _take(t, b, device)) for p, t in zip(preds, targets, strict=True)
        )
        total += _optimise(opt, loss) * len(b)
        seen += len(b)
    return total / seen


def train_stage1(
    mimicker: Mimicker,
    inputs,
    targets: Sequence,
    train_idx,
    val_idx,
    config: Stage1Config,
    device: torch.device | str = "cpu",
    log: Log = print,
) -> dict:
    """Stage 1: fit ``mimicker`` to cached teacher states by MSE; keep the best validation state.

    inputs:    (N, T, D) feature-projection outputs (numpy, memmap or torch array, or a
               :mod:`~workflow_scripts.backbones.rows` view of a cache; any float dtype, read
               and cast to float32 one batch at a time on ``device``).
    targets:   one (N, T, D) array per mimicker output (``mimicker.n_outputs``), in order
               (intermediate first, last layer last); see
               :func:`workflow_scripts.mimic.targets.choose_targets`.
    train_idx, val_idx: row indices (or boolean masks) of the training/validation utterances;
               ``val_idx`` must not be empty.
    Loss: sum over targets of the mean squared error; Adam(``config.lr``); shuffled batches
    (``config.seed``). After every epoch the validation loss is computed; the parameters of
    the epoch with the lowest one are loaded into ``mimicker`` at the end (ties: the earlier
    epoch).

    Returns {"history": [{"epoch", "train_loss", "val_loss", "val_loss_per_target"}, ...],
    "best_epoch" (1-based), "best_val_loss", "seconds"}.
    """
    device = torch.device(device)
    targets, n = _stage1_targets(mimicker, inputs, targets)
    epochs, batch_size = config.epochs, config.batch_size
    tr, va = _check_split(train_idx, val_idx, n, epochs)
    params = [p for p in mimicker.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the mimicker has no trainable parameters (depth 0?)")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    mimicker.to(device)
    opt = torch.optim.Adam(params, lr=config.lr)
    history: list[dict] = []
    best = (math.inf, 0, _snapshot(mimicker))
    t0 = time.time()
    for epoch in range(1, epochs + 1):
        train_loss = _stage1_epoch(mimicker, opt, inputs, targets, tr, batch_size, rng, device)
        val, per = stage1_loss(mimicker, inputs, targets, va, batch_size, device)
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val, "val_loss_per_target": per}
        )
        if val < best[0]:
            best = (val, epoch, _snapshot(mimicker))
        log(f"stage 1 epoch {epoch}/{epochs}: train {train_loss:.5f}  val {val:.5f}")
    mimicker.load_state_dict(best[2])
    mimicker.eval()
    return {
        "history": history,
        "best_epoch": best[1],
        "best_val_loss": best[0],
        "seconds": time.time() - t0,
    }


# --------------------------------------------------------------------------------------------
# stage 2
# --------------------------------------------------------------------------------------------
def _logit_batches(mimicker, head, inputs, idx: np.ndarray, batch_size: int, device):
    """(positions in ``idx``, float32 CPU logits) of head(mimicker(inputs[idx])[-1]), one
    batch of ``batch_size`` consecutive entries of ``idx`` at a time (rows read in sorted
    order, logits returned in the order of ``idx``); the caller sets eval mode."""
    for s in range(0, len(idx), batch_size):
        b = idx[s : s + batch_size]
        order = np.argsort(b, kind="stable")
        with autocast(device):
            logits = head(mimicker(_take(inputs, b[order], device))[-1]).float().cpu()
        inv = torch.empty_like(torch.from_numpy(order))
        inv[torch.from_numpy(order)] = torch.arange(len(order))
        yield np.arange(s, s + len(b)), logits[inv]


@torch.no_grad()
def mimic_logits(
    mimicker: Mimicker,
    head: ClassifierHead,
    inputs,
    idx,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits (len(idx), classes) of head(mimicker(inputs[idx])[-1]) in eval mode, rows in the
    order of ``idx``. Feed to ``finetune.accuracy_report``."""
    device = torch.device(device)
    idx = _as_index(idx, len(inputs), "idx")
    mimicker.eval()
    head.eval()
    out = [logits for _, logits in _logit_batches(mimicker, head, inputs, idx, batch_size, device)]
    if not out:
        return np.zeros((0, head.classifier.out_features), dtype=np.float32)
    return torch.cat(out).numpy()


@torch.no_grad()
def mimic_metrics(
    mimicker: Mimicker,
    head: ClassifierHead,
    inputs,
    labels,
    idx,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of head(mimicker(inputs[idx])[-1]) against
    ``labels[idx]`` in eval mode, accumulated batch by batch (memory: one batch, whatever
    ``len(idx)``)."""
    device = torch.device(device)
    idx = _as_index(idx, len(inputs), "idx")
    y = torch.from_numpy(np.asarray(labels[idx]).astype(np.int64))
    mimicker.eval()
    head.eval()
    loss, correct = 0.0, 0
    for pos, logits in _logit_batches(mimicker, head, inputs, idx, batch_size, device):
        yb = y[torch.from_numpy(pos)]
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    n = max(len(idx), 1)
    return loss / n, correct / n


def _stage2_params(mimicker: Mimicker, head: ClassifierHead, config: Stage2Config):
    """(train the mimicker?, train the head?, the parameters Adam updates)."""
    train_mim = not config.freeze_mimicker and any(p.requires_grad for p in mimicker.parameters())
    train_head = not config.freeze_head and any(p.requires_grad for p in head.parameters())
    params = []
    if train_mim:
        params += [p for p in mimicker.parameters() if p.requires_grad]
    if train_head:
        params += [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: mimicker and head are both frozen or parameter-free")
    return train_mim, train_head, params


def _stage2_epoch(mimicker, head, opt, inputs, y_all, tr, train_mim, train_head, batch_size,
                  rng, device) -> float:  # fmt: skip
    """One shuffled pass over the training rows; the mean cross-entropy per row. A frozen
    mimicker runs without gradients."""
    mimicker.train(train_mim)
    head.train(train_head)
    total, seen = 0.0, 0
    for b in _batches(tr, batch_size, rng):
        x = _take(inputs, b, device)
        y = y_all[torch.from_numpy(b)].to(device)
        with autocast(device):
            if train_mim:
                hidden = mimicker(x)[-1]
            else:
                with torch.no_grad():
                    hidden = mimicker(x)[-1]
            logits = head(hidden)
        loss = F.cross_entropy(logits.float(), y)
        total += _optimise(opt, loss) * len(b)
        seen += len(b)
    return total / seen


def train_stage2(
    mimicker: Mimicker,
    head: ClassifierHead,
    inputs,
    labels,
    train_idx,
    val_idx,
    config: Stage2Config,
    device: torch.device | str = "cpu",
    log: Log = print,
) -> dict:
    """Stage 2: cross-entropy of ``head(mimicker(x)[-1])`` against ``labels``.

    inputs: (N, T, D) cached feature-projection outputs (an array-like, read per batch as in
    :func:`train_stage1`); labels: (N,) class indices.
    ``config.freeze_mimicker`` (default True): the mimicker is not updated and runs in eval
    mode (its weights stay bit-identical); ``config.freeze_head`` (default False) likewise for
    the head. At least one of them must have trainable parameters. Adam(``config.lr``). The
    same code trains the ``no_mimic`` baseline (a depth-0 ``no_mimic`` mimicker: only the head
    learns). After every epoch the validation loss and accuracy are computed; the epoch with
    the highest accuracy (ties: lower loss, then earlier) is restored into both modules at the
    end.

    Returns {"history": [{"epoch", "train_loss", "val_loss", "val_accuracy"}, ...],
    "best_epoch", "best_val_accuracy", "seconds"}.
    """
    device = torch.device(device)
    labels_np = np.asarray(labels).astype(np.int64)
    n = _check_inputs(inputs, [labels_np], ["labels"])
    epochs, batch_size = config.epochs, config.batch_size
    tr, va = _check_split(train_idx, val_idx, n, epochs)
    y_all = torch.from_numpy(labels_np)
    train_mim, train_head, params = _stage2_params(mimicker, head, config)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    mimicker.to(device)
    head.to(device)
    opt = torch.optim.Adam(params, lr=config.lr)
    history: list[dict] = []
    best_key, best_epoch, best_state = None, 0, None
    t0 = time.time()
    with _frozen(mimicker, not train_mim), _frozen(head, not train_head):
        for epoch in range(1, epochs + 1):
            train_loss = _stage2_epoch(mimicker, head, opt, inputs, y_all, tr, train_mim,
                                       train_head, batch_size, rng, device)  # fmt: skip
            val_loss, val_acc = mimic_metrics(mimicker, head, inputs, labels_np, va,
                                              batch_size, device)  # fmt: skip
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "val_accuracy": val_acc})  # fmt: skip
            key = (val_acc, -val_loss)
            if best_key is None or key > best_key:
                best_key, best_epoch = key, epoch
                best_state = (_snapshot(mimicker), _snapshot(head))
            log(f"stage 2 epoch {epoch}/{epochs}: train {train_loss:.4f}  "
                f"val loss {val_loss:.4f}  val acc {val_acc:.4f}")  # fmt: skip
    mimicker.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    mimicker.eval()
    head.eval()
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val_accuracy": best_key[0],
        "seconds": time.time() - t0,
    }
