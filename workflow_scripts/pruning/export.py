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
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from workflow_scripts.core.files import apply_umask
from workflow_scripts.core.tables import layer_numbers
from workflow_scripts.pruning.layers import remove_layers

SAMPLING_RATE = 16000
_FIELDS = ("n_removed", "n_layers", "accuracy", "ci_lo", "ci_hi", "relative_accuracy",
           "base_accuracy", "eval_clips", "total_params")  # fmt: skip


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
    folder (relative to the export) it goes to."""
    rows = df[df["headline"] & df["removed"].notna()]
    entries = []
    for r in rows.itertuples(index=False):
        seed = None if pd.isna(r.seed) else int(r.seed)
        entry = {"folder": "." if seed is None else f"seed-{seed}", "seed": seed,
                 "removed_layers": layer_numbers(r.removed),
                 "removed_index": [int(i) for i in r.removed],
                 **{k: _plain(getattr(r, k)) for k in _FIELDS if hasattr(r, k)}}  # fmt: skip
        entries.append(entry)
    return entries


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
