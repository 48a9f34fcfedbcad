"""Decisions with uncertainty (issue #26): the accuracy *retained* by a compressed model with a
paired bootstrap interval over clips, and the per-clip predictions every evaluated model state
leaves beside its cell. Torch-free.

**Retained** = accuracy of a state / accuracy of the unpruned model on the same clips. Its
interval resamples the clip indices jointly for both (a paired percentile bootstrap: the same
resampled clips in the numerator and the denominator), so the clips both get right or both
get wrong do not widen it. A state that gives the unpruned model's predictions on every clip
has retained exactly 1 with a zero-width interval.

**Two verdicts**: ``meets_threshold`` (retained >= threshold, on the point estimate) and
``meets_with_confidence`` (``retained_lo`` >= threshold: the interval's lower bound keeps it).

**Predictions files** (``cells/<stage>/.../<cell>.predictions.parquet``): one row per
evaluated state and clip of the evaluation set; the state's identifiers first (e.g.
``seed``, ``n_removed``, ``healed`` for layer pruning, ``state`` for structured pruning),
then ``clip`` (the clip's position in the evaluation set, ``split_rows(manifest, "testing",
evaluation.test_clips)``), ``predicted`` and ``label`` (class indices of the cell's labels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Bootstrap resamples, two-sided level and seed of every retained interval.
N_BOOT = 1000
ALPHA = 0.05
SEED = 0
#: Resamples drawn at a time (memory: CHUNK x N clip weights).
CHUNK = 64

#: The per-clip columns of a predictions file, after the state identifiers.
PREDICTION_COLUMNS = {"clip": "int32", "predicted": "int16", "label": "int16"}


def _per_clip(correct) -> tuple[np.ndarray, int]:
    """(number of runs correct per clip (N,) as float64, runs): ``correct`` is (N,) 0/1 or
    (R, N) for R runs (e.g. random seeds) whose mean accuracy is the state's."""
    c = np.asarray(correct)
    c = c[None] if c.ndim == 1 else c
    if c.ndim != 2:
        raise ValueError(f"correct must be (N,) or (runs, N), got shape {c.shape}")
    return c.astype(np.float64).sum(0), c.shape[0]


def retained_intervals(
    states: Sequence, base, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = SEED
) -> list[tuple[float, float, float]]:
    """Per state, (retained, retained_lo, retained_hi): the state's accuracy over the
    unpruned model's (``base``: (N,) 0/1 per clip) on the same N clips, with the paired
    percentile bootstrap interval (``n_boot`` resamples of the clip indices, drawn from
    ``seed``, shared by numerator and denominator and by every state). A state is (N,) 0/1
    per clip or (R, N) for the mean over R runs. Resamples whose base accuracy is 0 are left
    out; NaN when nothing is left (or N = 0, or ``n_boot`` = 0 for the interval).

    Sums of 0/1 counts are integers, exact in float64 whatever the summation order, so a
    state identical to the base gives exactly 1 in every resample."""
    b, _ = _per_clip(base)
    per = [_per_clip(s) for s in states]
    n = len(b)
    for c, _ in per:
        if len(c) != n:
            raise ValueError(f"a state has {len(c)} clips, the base {n}")
    total = b.sum()
    point = [c.sum() / runs / total if total > 0 else math.nan for c, runs in per]
    if n == 0 or n_boot <= 0 or not per:
        return [(p, math.nan, math.nan) for p in point]
    M = np.stack([c for c, _ in per])  # (S, N)
    runs = np.array([r for _, r in per], dtype=np.float64)[:, None]
    rng = np.random.default_rng(seed)
    num, den = np.empty((len(per), n_boot)), np.empty(n_boot)
    for s in range(0, n_boot, CHUNK):
        k = min(CHUNK, n_boot - s)
        idx = rng.integers(0, n, size=(k, n))
        w = np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n)
        w = w.reshape(k, n).astype(np.float64)  # how often each clip is drawn
        den[s : s + k] = w @ b
        num[:, s : s + k] = M @ w.T
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > 0, num / runs / np.where(den > 0, den, 1.0), np.nan)
    out = []
    for p, r in zip(point, ratio, strict=True):
        r = r[~np.isnan(r)]
        if len(r) == 0:
            out.append((p, math.nan, math.nan))
            continue
        lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
        out.append((p, float(lo), float(hi)))
    return out


def retained_interval(state, base, n_boot: int = N_BOOT, alpha: float = ALPHA,
                      seed: int = SEED) -> tuple[float, float, float]:  # fmt: skip
    """(retained, retained_lo, retained_hi) of one state (:func:`retained_intervals`)."""
    return retained_intervals([state], base, n_boot, alpha, seed)[0]


def meets_with_confidence(retained_lo, threshold: float):
    """Whether the retained interval's lower bound keeps ``threshold`` (False where there is
    no interval). Scalars or arrays."""
    lo = np.asarray(retained_lo, dtype=float)
    out = np.where(np.isnan(lo), False, lo >= threshold)
    return bool(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------------------
# predictions files
# ----------------------------------------------------------------------------------------
def predictions_frame(predicted, labels, **state) -> pd.DataFrame:
    """One state's per-clip rows: the ``state`` identifiers (scalars, repeated; a value given
    as ``(value, dtype)`` gets that dtype), ``clip`` = 0..N-1, ``predicted``, ``label``."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} differ")
    n = len(labels)
    cols = {}
    for key, value in state.items():
        value, dtype = value if isinstance(value, tuple) else (value, None)
        cols[key] = pd.Series([value] * n, dtype=dtype)
    cols["clip"] = np.arange(n, dtype=np.int32)
    cols["predicted"] = predicted.astype(np.int16)
    cols["label"] = labels.astype(np.int16)
    return pd.DataFrame(cols)


def concat_predictions(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The states' rows as one frame (dtypes kept), or an empty one with the clip columns."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({k: pd.Series(dtype=t) for k, t in PREDICTION_COLUMNS.items()})
    return pd.concat(frames, ignore_index=True)


def correct_of(predictions: pd.DataFrame, **state) -> np.ndarray:
    """0/1 per clip (ordered by ``clip``) of the state whose identifiers equal ``state``
    (a None value matches a null); (R, N) when several runs match and ``state`` leaves
    a run identifier out - rows grouped by the remaining columns."""
    sel = pd.Series(True, index=predictions.index)
    for key, value in state.items():
        col = predictions[key]
        sel &= col.isna() if value is None else (col == value).fillna(False).astype(bool)
    d = predictions[sel].sort_values("clip", kind="stable")
    ok = (d.predicted.to_numpy() == d.label.to_numpy()).astype(np.int8)
    n = d["clip"].nunique()
    if len(d) == n:
        return ok
    return ok.reshape(n, -1).T  # clips sorted stably: each clip's runs in file order
