"""One layer-pruning cell: the rows of one (model, strategy) pair.

Cell file ``cells/pruning/{model}/{strategy}.parquet``: one row per number of removed blocks
``n = 0 .. L-1`` (``n = 0`` is the unpruned fine-tuned model). Importance scores
(``block_influence``, ``knn_block_influence``, ``angular_block``) come from the hidden-state
cache of the validation split, ``similarity_greedy`` runs validation clips through the model;
accuracy is measured on the test split. A seeded strategy (``random``) is one cell holding the
rows of every configured seed (``seed`` = that seed) plus one mean-over-seeds row per ``n``
(``seed`` = null, ``removed`` = null, ``ci_lo``/``ci_hi`` = NaN, the seed spread in
``accuracy_min``/``accuracy_max``); every other strategy has ``seed`` = null.

Test clips: the evaluation set (``evaluation.test_clips``, the first clips of
``data.loader.split_rows(manifest, "testing", n)``, as every stage; ``eval_clips``). Latency:
each removal set timed against the unpruned model, interleaved in this process
(:func:`~workflow_scripts.pruning.sweeps.removal_latency`; ``speedup`` with a 95% interval,
``timing_precision``, ``timing_device``). ``headline``: the row of each curve (each seed and
the mean) at the largest n such that every n' <= n keeps ``threshold`` of the unpruned
accuracy; with an export folder, that pruned model is saved there
(:mod:`workflow_scripts.pruning.export`).

:func:`run_cell` reads the cell's inputs (model folder, manifest, data root, cache) and calls
:func:`cell_rows`, the computation on a loaded model and clips. Memory does not grow with the
test split: its clips are read one evaluation batch at a time (per-clip predictions are
accumulated per removal set), and so are the healing clips when ``heal.train_clips`` is null.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from workflow_scripts.backbones.clips import ClipSet, as_clips
from workflow_scripts.backbones.evaluate import accuracy_report, predict_batches
from workflow_scripts.core.retained import (
    concat_predictions,
    meets_with_confidence,
    predictions_frame,
    retained_intervals,
)
from workflow_scripts.pruning.heal import heal_with_lora
from workflow_scripts.pruning.layers import n_layers, remove_layers
from workflow_scripts.pruning.report import headline_rows
from workflow_scripts.pruning.strategies import get, removal_plans, scores_from_cache
from workflow_scripts.pruning.sweeps import no_latency, removal_latency, sweep_with_predictions

#: The columns the rule's log shows.
LOG_COLUMNS = ["seed", "n_removed", "removed", "accuracy", "relative_accuracy", "total_params",
               "latency_ms", "speedup", "headline", "healed_accuracy"]  # fmt: skip
Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------------------------------
# The cell from its input files
# ----------------------------------------------------------------------------------------
def run_cell(
    cell: dict,
    *,
    model: str,
    model_dir: str,
    manifest: str,
    root: str,
    cache: str | None = None,
    device=None,
    log: Log | None = None,
    export_dir: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the cell's table, its per-clip predictions: :func:`cell_rows`) for fine-tuned model
    ``model`` (its folder ``model_dir``) and the
    ``cell`` slice of :func:`~workflow_scripts.pruning.plan.cell_slice`: the test clips of
    ``manifest`` under the data ``root`` (:func:`evaluation_rows`), calibration from the validation
    ``cache`` (cache strategies) or validation clips (evaluator strategies), the training
    clips for healing. Column ``model`` first, ``calibration_clips`` (null: no calibration)
    last. With ``export_dir``, the headline models are saved there
    (:func:`~workflow_scripts.pruning.export.export_headline`)."""
    from workflow_scripts.backbones.registry import load_classifier, pick_device
    from workflow_scripts.data.loader import split_rows
    from workflow_scripts.pruning.export import export_headline

    log = log or _quiet
    strategy = cell["strategy"]
    manifest_df = pd.read_parquet(manifest)
    device = device or pick_device()
    net = load_classifier(model_dir).to(device).eval()
    test = ClipSet.from_rows(root, evaluation_rows(manifest_df, cell))
    log(f"{model} / {strategy}: {len(test)} test clips, device {device}")
    scores, evaluator, n_cal = _calibration(cell, net, device, cache, root, manifest_df, log)

    def train_data():
        limit = cell["heal"]["train_clips"]  # null: the whole split, streamed
        rows = split_rows(manifest_df, "training", limit)
        log(f"healing on {len(rows)} training clips")
        return ClipSet.from_rows(root, rows, in_memory=limit is not None), None

    df, predictions = cell_rows(net, cell, test, None, device, scores, evaluator, train_data, log)
    df.insert(0, "model", model)
    df["calibration_clips"] = pd.array([n_cal] * len(df), dtype="Int64")  # null: no scores
    if export_dir is not None:
        export_headline(net.cpu(), df, export_dir, log)
    return df, predictions


def evaluation_rows(manifest_df: pd.DataFrame, cell: dict) -> pd.DataFrame:
    """The cell's test clips: the evaluation set, ``split_rows(manifest, "testing",
    cell["test_clips"])`` (the slice's ``test_clips`` is ``evaluation.test_clips``)."""
    from workflow_scripts.data.loader import split_rows

    return split_rows(manifest_df, "testing", cell["test_clips"])


def _calibration(cell: dict, model, device, cache, root, manifest_df, log: Log):
    """``(scores, evaluator, n_clips)`` of the cell's strategy: scores from the first
    ``calibration_clips`` of the validation hidden-state cache (memory-mapped: the metrics
    read it in chunks), or its evaluator on ``settings["clips"]`` validation clips run
    through the model, or nothing."""
    from workflow_scripts.backbones.cachefile import read_layers
    from workflow_scripts.data.loader import load_split

    spec, settings = get(cell["strategy"]), cell["settings"]
    if spec.needs == "cache":
        H = read_layers(cache, limit=cell["calibration_clips"], mmap=True)
        scores = scores_from_cache(spec.name, H, settings)
        log(f"scores from {H.shape[1]} validation clips: {scores}")
        return scores, None, H.shape[1]
    if spec.needs == "model":
        x_val, _, _ = load_split(root, manifest_df, "validation", settings["clips"])
        return None, spec.build_evaluator(model, x_val, device, settings), len(x_val)
    return None, None, None


def provenance_seed(cell: dict) -> str | int | None:
    """The seed a cell's provenance records: a seeded strategy's removal-order seeds (the heal
    seed is in the slice), else the heal seed when healing is on."""
    if get(cell["strategy"]).seeded:
        return ",".join(map(str, cell["settings"]["seeds"]))
    return cell["heal"]["seed"] if cell["heal"] else None


# ----------------------------------------------------------------------------------------
# The cell on a loaded model
# ----------------------------------------------------------------------------------------
def cell_rows(
    model,
    cell: dict,
    test_audio,
    test_labels: np.ndarray | None,
    device="cpu",
    scores=None,
    evaluator=None,
    train_data: Callable[[], tuple] | None = None,
    log: Log | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows of one pruning cell, their per-clip predictions) for a fine-tuned ``model``
    (eval mode, on ``device``) and the ``cell`` slice, without the ``model`` and
    ``calibration_clips`` columns :func:`run_cell` adds. The test clips ``test_audio`` are a
    :class:`~workflow_scripts.backbones.clips.ClipSet` (``test_labels`` None), read one
    batch at a time, or an in-memory array with its labels; ``train_data()`` returns the
    healing clips the same way, as (clips, None) or (audio, labels).

    Accuracy: one :func:`~workflow_scripts.pruning.sweeps.sweep` over all removal sets (all
    seeds) on the test clips, with prefix resumption. Latency (when enabled):
    :func:`~workflow_scripts.pruning.sweeps.removal_latency` on the first
    ``latency.batch_size`` test clips, each set against the unpruned model. Healing (when
    ``cell["heal"]`` lists n): for each listed n < L, the set removed at n is healed with
    :func:`~workflow_scripts.pruning.heal.heal_with_lora` on ``train_data()`` (training
    split) and the healed model's test accuracy is reported beside the unhealed one.
    ``headline``: :func:`~workflow_scripts.pruning.report.headline_rows` at
    ``cell["threshold"]`` (the point estimate).

    Uncertainty (issue #26): ``retained_lo`` / ``retained_hi`` (and ``healed_retained_lo`` /
    ``_hi``) are the paired bootstrap interval of ``relative_accuracy`` over the test clips
    (:func:`~workflow_scripts.core.retained.retained_intervals`; a mean-over-seeds row pools
    its seeds' predictions), ``meets_threshold`` / ``meets_with_confidence`` whether the
    point estimate / the interval's lower bound keeps ``cell["threshold"]``. The predictions
    frame has one row per evaluated state and clip: ``seed``, ``n_removed``, ``healed``,
    ``clip``, ``predicted``, ``label`` (:func:`~workflow_scripts.core.retained.predictions_frame`).
    """
    log = log or _quiet
    strategy, settings = cell["strategy"], cell["settings"]
    device = torch.device(device)
    test = as_clips(test_audio, test_labels)
    L = n_layers(model)
    plans = removal_plans(strategy, L, settings, cell.get("keep_first"), scores, evaluator)
    flat = [(seed, s) for seed, sets in plans for s in sets]
    rows, pred, labels = _sweep_rows(model, cell, [s for _, s in flat], test, device, log)
    lat = cell["latency"]
    base_acc = rows[0]["accuracy"] if rows else math.nan
    for (seed, _), row in zip(flat, rows, strict=True):
        row.update(
            seed=seed,
            n_layers=L,
            base_accuracy=base_acc,
            accuracy_min=row["accuracy"],
            accuracy_max=row["accuracy"],
            latency_warmup=lat.get("warmup", 0),
            latency_repeats=lat.get("repeats", 0) if lat.get("enabled") else 0,
            healed=False,
            healed_accuracy=math.nan,
            healed_ci_lo=math.nan,
            healed_ci_hi=math.nan,
            healed_relative_accuracy=math.nan,
            heal_steps=0,
            heal_seconds=math.nan,
        )
    healed = _heal_rows(model, cell, flat, rows, test, device, train_data, log)
    df = pd.DataFrame(rows)
    if get(strategy).seeded:
        df = pd.concat([df, _mean_rows(df)], ignore_index=True)
    df["seed"] = df["seed"].astype("Int64")
    _retained_columns(df, flat, pred, labels, healed, get(strategy).seeded)
    threshold = cell["threshold"]
    df["meets_threshold"] = (df.relative_accuracy >= threshold) | (df.n_removed == 0)
    df["meets_with_confidence"] = meets_with_confidence(df.retained_lo, threshold)
    df["headline"] = headline_rows(df, threshold)
    if scores is not None:
        df["scores"] = json.dumps(np.asarray(scores, dtype=float).round(6).tolist())
    else:
        df["scores"] = None
    return df, _predictions(flat, pred, labels, healed)


def _predictions(flat, pred: np.ndarray, labels: np.ndarray, healed: dict) -> pd.DataFrame:
    """The per-clip predictions of every evaluated state: each removal set (``pred[k + 1]``
    for ``flat[k]``) and each healed one (``healed[k]``)."""
    frames = []
    for k, (seed, s) in enumerate(flat):
        for is_healed, p in ((False, pred[k + 1]), (True, healed.get(k))):
            if p is not None:
                frames.append(predictions_frame(p, labels, seed=(seed, "Int32"),
                                                n_removed=(len(s), "int16"),
                                                healed=is_healed))  # fmt: skip
    return concat_predictions(frames)


def _retained_columns(df: pd.DataFrame, flat, pred, labels, healed: dict, seeded: bool):
    """``retained_lo`` / ``retained_hi`` and ``healed_retained_lo`` / ``_hi`` of every row
    (in place): the rows of ``flat`` against the unpruned model (``pred[0]``), then (seeded
    strategies) one mean row per n pooling every seed's predictions at that n."""
    base = pred[0] == labels
    ok = [pred[k + 1] == labels for k in range(len(flat))]
    fixed = [healed[k] == labels if k in healed else None for k in range(len(flat))]
    states, heal_states = list(ok), list(fixed)
    if seeded:  # the mean rows: one per n, in order (_mean_rows)
        for n in sorted({len(s) for _, s in flat}):
            ks = [k for k, (_, s) in enumerate(flat) if len(s) == n]
            states.append(np.stack([ok[k] for k in ks]))
            heal_states.append(np.stack([fixed[k] for k in ks])
                               if all(fixed[k] is not None for k in ks) else None)  # fmt: skip
    if len(states) != len(df):
        raise AssertionError(f"{len(states)} states for {len(df)} rows")
    cis = retained_intervals(states, base)
    df["retained_lo"] = [c[1] for c in cis]
    df["retained_hi"] = [c[2] for c in cis]
    have = [i for i, h in enumerate(heal_states) if h is not None]
    lo, hi = np.full(len(df), math.nan), np.full(len(df), math.nan)
    for i, c in zip(have, retained_intervals([heal_states[i] for i in have], base), strict=True):
        lo[i], hi[i] = c[1], c[2]
    df["healed_retained_lo"], df["healed_retained_hi"] = lo, hi


def _sweep_rows(model, cell: dict, sets, test: ClipSet, device, log: Log) -> tuple:
    """(the accuracy rows of every removal set (the test clips streamed in batches), with the
    latency columns (:func:`~workflow_scripts.pruning.sweeps.removal_latency` on the first
    ``latency.batch_size`` clips when latency is enabled, else NaN); the predicted classes
    (1 + S, N), row 0 the unpruned model; the labels)."""
    strategy = cell["strategy"]
    t0 = time.perf_counter()
    rows, pred, labels = sweep_with_predictions(model, test, None, strategy, sets, device,
                                                batch_size=cell["batch_size"])  # fmt: skip
    log(f"accuracy sweep of {len(sets)} sets: {time.perf_counter() - t0:.1f} s")
    lat = cell["latency"]
    if not lat.get("enabled"):
        for row in rows:
            row.update(no_latency(device))
        return rows, pred, labels
    t0 = time.perf_counter()
    audio = test.read(np.arange(min(lat["batch_size"], len(test))))
    timed = removal_latency(model, sets, audio, device, lat["warmup"], lat["repeats"])
    for row, t in zip(rows, timed, strict=True):
        row.update(t)
    log(f"latency of {len(sets)} sets (each against the unpruned model, interleaved): "
        f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return rows, pred, labels


def _heal_rows(model, cell, flat, rows, test: ClipSet, device, train_data, log: Log) -> dict:
    """Heal the set removed at each listed n < L and write the healed accuracy into its rows
    (every seed's); ``train_data()`` is called once, only when some n is healed. Returns
    index into ``flat`` -> the healed model's predicted classes (N,)."""
    heal = cell.get("heal")
    wanted = [n for n in heal["n"] if n < n_layers(model)] if heal else []
    out: dict = {}
    if not wanted:
        return out
    if train_data is None:
        raise ValueError("healing is on but no training data was given")
    x_train, y_train = train_data()
    C = model.config.num_labels
    base_acc = rows[0]["accuracy"]
    for k, ((_, s), row) in enumerate(zip(flat, rows, strict=True)):
        if len(s) not in wanted:
            continue
        t0 = time.perf_counter()
        healed = heal_with_lora(
            remove_layers(model, s), x_train, y_train, steps=heal["steps"],
            lr=heal["lr"], rank=heal["rank"], alpha=heal["alpha"], device=device,
            batch_size=heal["batch_size"], seed=heal["seed"],
        )  # fmt: skip
        batches = test.batches(cell["batch_size"])
        logits, y = predict_batches(healed, batches, device)
        rep = accuracy_report(logits, y, C)
        out[k] = logits.argmax(1)
        row.update(
            healed=True,
            healed_accuracy=rep["accuracy"],
            healed_ci_lo=rep["ci_lo"],
            healed_ci_hi=rep["ci_hi"],
            healed_relative_accuracy=rep["accuracy"] / base_acc if base_acc > 0 else math.nan,
            heal_steps=heal["steps"],
            heal_seconds=time.perf_counter() - t0,
        )
        log(f"healed {s}: {row['accuracy']:.4f} -> {rep['accuracy']:.4f}")
        del healed
    return out


def _mean_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One mean-over-seeds row per n (seeded strategies)."""
    rows = []
    for _, g in df.groupby("n_removed", sort=True):
        first = g.iloc[0]
        row = first.to_dict()
        row.update(
            seed=None,
            removed=None,
            accuracy=float(g.accuracy.mean()),
            ci_lo=math.nan,
            ci_hi=math.nan,
            accuracy_min=float(g.accuracy.min()),
            accuracy_max=float(g.accuracy.max()),
            relative_accuracy=float(g.relative_accuracy.mean()),
            per_class_accuracy=list(np.mean(np.stack(g.per_class_accuracy.to_list()), axis=0)),
            transformer_params=int(round(g.transformer_params.mean())),
            total_params=int(round(g.total_params.mean())),
            latency_ms=float(g.latency_ms.median()),
            latency_min_ms=float(g.latency_min_ms.min()),
            base_latency_ms=float(g.base_latency_ms.median()),
            base_latency_min_ms=float(g.base_latency_min_ms.min()),
            speedup=float(g.speedup.median()),  # the seeds' median; no interval
            speedup_lo=math.nan,
            speedup_hi=math.nan,
        )
        for col in ("healed_accuracy", "healed_relative_accuracy", "heal_seconds"):
            row[col] = float(g[col].mean()) if g[col].notna().any() else math.nan
        row.update(healed_ci_lo=math.nan, healed_ci_hi=math.nan)
        rows.append(row)
    return pd.DataFrame(rows)
