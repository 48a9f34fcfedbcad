"""Export of a pruning cell's headline models as ordinary ``transformers`` checkpoints.

The headline of a curve is the largest n such that every n' <= n keeps ``pruning.threshold``
of the unpruned test accuracy (the cell's ``headline`` row,
:func:`workflow_scripts.pruning.report.headline_rows`). Its model - the fine-tuned classifier
with those blocks deleted (:func:`~workflow_scripts.pruning.layers.remove_layers`:
``num_hidden_layers`` reduced, ``kept_layer_ids`` recording the original indices, WavLM's
relative-position table moved into the new first block) - is saved with ``save_pretrained``
(safetensors), so ``AutoModelForAudioClassification.from_pretrained(folder)`` loads it with no
project code. A ``preprocessor_config.json`` (16 kHz, zero-mean unit-variance per utterance,
as the cells normalise) lets ``AutoFeatureExtractor.from_pretrained(folder)`` prepare audio.

Layout of ``exports/pruning/{model}/{strategy}/``: the checkpoint itself for a deterministic
strategy; one ``seed-{s}/`` checkpoint per seed for a seeded one (``random``; the mean over
seeds removes no single set). ``export.json`` (top level) lists what each checkpoint is: its
removed and kept layers, numbered 1..L as in every table (``removed_layers``, ``kept_layers``;
the 0-based block indices the code uses in ``removed_index``, ``kept_layer_index``; the
saved config's ``kept_layer_ids`` are 0-based too), n, test accuracy with CI, relative
accuracy and the clips it counts.

Both decisions (issue #26, the overview's convention): the exported headline is decided on the
point estimate (``decision``); each checkpoint also says whether it keeps the threshold with
confidence (``meets_with_confidence``: the lower end ``retained_lo`` of the retained share's
paired bootstrap interval over clips keeps it) and which n its curve reaches with confidence
(``n_removed_with_confidence``, every smaller n too; ``removed_layers_with_confidence``);
only the point-estimate headline is saved, the confident one is named.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.core.files import apply_umask
from workflow_scripts.core.tables import layer_numbers
from workflow_scripts.pruning.layers import remove_layers

SAMPLING_RATE = 16000
_FIELDS = ("n_removed", "n_layers", "accuracy", "ci_lo", "ci_hi", "relative_accuracy",
           "retained_lo", "retained_hi", "meets_threshold", "meets_with_confidence",
           "base_accuracy", "eval_clips", "total_params")  # fmt: skip
#: Which decision the exported headline uses (``decision`` in export.json).
DECISION = "point estimate (relative_accuracy >= threshold)"


def save_feature_extractor(folder: str | Path) -> None:
    """``preprocessor_config.json`` of the audio preparation every stage uses: 16 kHz mono,
    normalised to zero mean and unit variance per utterance (``normalize_audio``)."""
    from transformers import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLING_RATE,
                                  padding_value=0.0, do_normalize=True,
                                  return_attention_mask=False)  # fmt: skip
    fe.save_pretrained(str(folder))


def headline_entries(df: pd.DataFrame) -> list[dict]:
    """One entry per exported checkpoint: the ``headline`` rows that remove a concrete set
    (every row of a deterministic strategy's curve, each seed's of a seeded one), with the
    folder (relative to the export) it goes to, both decisions at it and the count its curve
    keeps with confidence (:func:`confident_headline`)."""
    rows = df[df["headline"] & df["removed"].notna()]
    entries = []
    for r in rows.itertuples(index=False):
        seed = None if pd.isna(r.seed) else int(r.seed)
        entry = {"folder": "." if seed is None else f"seed-{seed}", "seed": seed,
                 "removed_layers": layer_numbers(r.removed),
                 "removed_index": [int(i) for i in r.removed],
                 **{k: _plain(getattr(r, k)) for k in _FIELDS if hasattr(r, k)},
                 **confident_headline(_curve(df, r))}  # fmt: skip
        entries.append(entry)
    return entries


def _curve(df: pd.DataFrame, row) -> pd.DataFrame:
    """The rows of ``row``'s curve: same model, strategy and seed (null: null)."""
    keep = pd.Series(True, index=df.index)
    for k in ("model", "strategy", "seed"):
        if k in df.columns:
            v = getattr(row, k)
            keep &= df[k].isna() if pd.isna(v) else (df[k] == v).fillna(False).astype(bool)
    return df[keep]


def confident_headline(curve: pd.DataFrame) -> dict:
    """The largest n of one curve such that every n' <= n keeps the threshold with
    confidence (the cell's ``meets_with_confidence``; n = 0 always keeps it) and the layers it
    removes (1..L); None for cells without the column."""
    if "meets_with_confidence" not in curve.columns:
        return {"n_removed_with_confidence": None, "removed_layers_with_confidence": None}
    c = curve.sort_values("n_removed")
    n = c.n_removed.to_numpy(int)
    ok = c.meets_with_confidence.fillna(False).to_numpy(bool) | (n == 0)
    best = int(n[np.cumprod(ok).astype(bool)].max())
    removed = c[c.n_removed == best].removed.iloc[0]
    return {"n_removed_with_confidence": best,
            "removed_layers_with_confidence": layer_numbers(removed) or []}  # fmt: skip


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def export_headline(model, df: pd.DataFrame, out_dir: str | Path,
                    log: Callable[[str], None] | None = None) -> list[dict]:  # fmt: skip
    """Save the headline model(s) of the cell table ``df`` (from the fine-tuned ``model``) to
    ``out_dir`` (replaced; layout in the module docstring) and write ``export.json``; returns
    its entries."""
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    entries = headline_entries(df)
    info = {"headline": "largest n such that every n' <= n keeps the threshold",
            "decision": DECISION,
            "with_confidence": "n_removed_with_confidence: the same rule with "
                               "meets_with_confidence (retained_lo >= threshold); not exported",
            "numbering": "removed_layers / kept_layers: layers 1..L of the unpruned stack; "
                         "*_index and the config's kept_layer_ids: 0-based block indices",
            "model": _plain(df["model"].iloc[0]) if "model" in df else None,
            "strategy": _plain(df["strategy"].iloc[0]), "checkpoints": entries}  # fmt: skip
    for e in entries:
        folder = out / e["folder"]
        pruned = remove_layers(model, e["removed_index"]).eval()
        pruned.save_pretrained(str(folder), safe_serialization=True)
        save_feature_extractor(folder)
        e["num_hidden_layers"] = int(pruned.config.num_hidden_layers)
        e["kept_layer_index"] = list(pruned.config.kept_layer_ids)
        e["kept_layers"] = layer_numbers(e["kept_layer_index"])
        if log:
            log(f"exported n={e['n_removed']} (removed layers {e['removed_layers']}) to {folder}")
        del pruned
    (out / "export.json").write_text(json.dumps(info, indent=1))
    apply_umask(out)
    return entries
