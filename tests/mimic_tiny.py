"""A tiny mimic world for unit tests: a fine-tuned-looking classifier (3 layers, hidden 32;
post-LN, or pre-LN with ``stable=True``) saved with ``save_pretrained``, 1-s wav clips of three
words with a manifest, the three hidden-state caches made from those clips
(``backbones.cachefile.write_cache``, with ``final``), a baseline cell and a blocks table.
Everything a mimic cell reads, in seconds on one CPU core."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd

MODEL = "tiny"
PRETRAIN = {"arch": "hubert", "layers": 3, "hidden": 32, "heads": 2, "ffn": 64,
            "conv_dim": [16, 32, 32]}  # fmt: skip
WORDS = ["yes", "no", "up"]
SIZES = {"training": 24, "validation": 12, "testing": 12}
MIMIC = {
    "types": {"linear": {"depths": [1, 2], "width": 8},
              "transformer": {"depths": [1], "heads": 2, "ffn": 16}},
    "stage1": {"epochs": 3, "batch_size": 8},
    "stage2": {"epochs": 3, "batch_size": 8},
    "latency": {"batch_size": 4, "warmup": 1, "repeats": 2},
}  # fmt: skip


def tiny_config(**mimic) -> dict:
    """A validated config with the one tiny model and :data:`MIMIC` updated by ``mimic``
    (top-level keys of the ``mimic`` section replace the defaults here)."""
    from workflow_scripts.core.config import validate_config

    cfg = {
        "models": {MODEL: {"pretrain": dict(PRETRAIN)}},
        "outputs": ["mimic"],
        "similarity": {"metrics": {"cka_linear": {}}},
        "mimic": {**copy.deepcopy(MIMIC), **copy.deepcopy(mimic)},
    }
    return validate_config(cfg)


def _clip(label: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(16000) / 16000
    tone = 0.4 * np.sin(2 * np.pi * (220 + 180 * label) * t)
    return (tone + 0.05 * rng.standard_normal(16000)).astype(np.float32)


def _write_clips(root: Path, seed: int) -> pd.DataFrame:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    rows = []
    for split, n in SIZES.items():
        for i in range(n):
            label = i % len(WORDS)
            rel = f"{WORDS[label]}/{split[:2]}{i:02d}_nohash_0.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, _clip(label, rng), 16000, subtype="PCM_16")
            rows.append({"path": rel, "label": WORDS[label], "label_idx": label,
                         "speaker": f"{split[:2]}{i:02d}", "split": split,
                         "usable": True})  # fmt: skip
    return pd.DataFrame(rows)


def build_world(d: Path, seed: int = 0, stable: bool = False) -> dict[str, str]:
    """Write the tiny world under ``d`` (a pre-LN model with ``stable``); returns the cell's
    inputs by name (the keys of ``mimic.plan.cell_inputs``, ``blocks`` included) plus ``root``
    (the clips' folder) and ``baseline_other`` (a baseline cell whose clip count does not match
    the testing cache)."""
    import torch
    from transformers import AutoModelForAudioClassification

    from workflow_scripts.backbones.cache import extract_hidden_states
    from workflow_scripts.backbones.cachefile import write_cache
    from workflow_scripts.backbones.evaluate import accuracy_report, predict
    from workflow_scripts.backbones.registry import small_config
    from workflow_scripts.core.retained import predictions_frame
    from workflow_scripts.data.loader import load_split

    d = Path(d)
    root = d / "corpus"
    manifest = _write_clips(root, seed)
    out = {"root": str(root), "manifest": str(d / "manifest.parquet")}
    manifest.to_parquet(out["manifest"])
    torch.manual_seed(seed)
    cfg = small_config(PRETRAIN["arch"], {**PRETRAIN, "classifier_proj": 8})
    cfg.num_labels = len(WORDS)
    cfg.do_stable_layer_norm = stable
    model = AutoModelForAudioClassification.from_config(cfg).eval()
    out["model"] = str(d / "finetuned")
    model.save_pretrained(out["model"], safe_serialization=True)
    cpu = torch.device("cpu")
    for split, key in (("training", "train_cache"), ("validation", "val_cache"),
                       ("testing", "test_cache")):  # fmt: skip
        audio, labels, paths = load_split(root, manifest, split)
        arrays = extract_hidden_states(model, audio, cpu, batch_size=16, progress=False)
        out[key] = str(d / f"cache/{split}.safetensors")
        write_cache(out[key], arrays, labels, paths, meta={"model_sha256": "tiny"})
    rep = accuracy_report(predict(model, audio, cpu), labels, len(WORDS))
    base = {"model": MODEL, "split": "testing", "n": len(labels),
            **{k: rep[k] for k in ("accuracy", "ci_lo", "ci_hi")}}  # fmt: skip
    out["baseline"], out["baseline_other"] = str(d / "baseline.parquet"), str(d / "other.parquet")
    pd.DataFrame([base]).to_parquet(out["baseline"])
    pd.DataFrame([{**base, "n": len(labels) + 1}]).to_parquet(out["baseline_other"])
    out["baseline_predictions"] = str(d / "baseline.predictions.parquet")
    pred = predict(model, audio, cpu).argmax(1)
    predictions_frame(pred, labels).to_parquet(out["baseline_predictions"])
    blocks = pd.DataFrame(
        [(MODEL, "cka_linear", 0, 1), (MODEL, "cka_linear", 2, 3)],
        columns=["model", "metric", "first_state", "last_state"],
    )
    blocks["n_states"] = PRETRAIN["layers"] + 1
    out["blocks"] = str(d / "blocks.csv")
    blocks.to_csv(out["blocks"], index=False)
    return out
