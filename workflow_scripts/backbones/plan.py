"""The backbone stage's plan (``rules/pretrain.smk``, ``rules/backbones.smk``): pretraining
of the small shipped backbones, keyword fine-tuning with its baseline cell per model, and the
hidden-state caches. Torch-free: Snakemake imports it on every run."""

from __future__ import annotations

import re
from pathlib import Path

from workflow_scripts.core import paths
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.data.plan import words

SPLITS = ("training", "validation", "testing")
# Fine-tuning settings a model gets unless the config's `finetune` (or the model's own) says
# otherwise.
DEFAULT_FINETUNE = {
    "steps": 400,
    "batch_size": 32,
    "lr": 5e-4,
    "warmup_frac": 0.1,
    "seed": 0,
    "eval_clips": None,
    "freeze_feature_encoder": True,
    "checkpoint_every": 100,
    "mask_time_prob": 0.05,
    "head_lr_mult": 1.0,
    "cache_features": True,
}
# Which clip count of `cache` each split's cache holds.
_CACHE_CLIPS_KEY = {"training": "train_clips", "testing": "test_clips", "validation": "clips"}


def resolve_finetune(global_spec: dict | None, model_spec: dict | None) -> dict:
    """Defaults < the config's top-level ``finetune`` < the model's own ``finetune``."""
    return {**DEFAULT_FINETUNE, **(global_spec or {}), **(model_spec or {})}


def pretrained(config: dict) -> list[str]:
    """The models the workflow pretrains itself (those with a ``pretrain`` spec)."""
    return [m for m, spec in config["models"].items() if "pretrain" in spec]


def model_source(config: dict, model: str) -> str:
    """Where a model's weights come from: its ``hf`` id/path or its pretraining output."""
    spec = config["models"][model]
    if "pretrain" in spec:
        return f"{config['pretrained_dir']}/{model}"
    return spec["hf"]


def pretrain_slice(config: dict, model: str) -> dict:
    """Pretraining slice: that model's pretrain spec only."""
    return config["models"][model]["pretrain"]


def finetune_slice(config: dict, model: str) -> dict:
    """Fine-tuning slice: the backbone source, the resolved settings and the label set."""
    spec = config["models"][model]
    return {
        "source": model_source(config, model),
        "finetune": resolve_finetune(config.get("finetune"), spec.get("finetune")),
        "labels": words(config),
    }


def finetune_inputs(config: dict, model: str, results: str = RESULTS) -> dict[str, str]:
    """The manifest, plus the backbone folder when it is a local path or a pretraining output
    (a hub id is fetched by transformers and is not a file input)."""
    inputs = {"manifest": paths.path("manifest", results)}
    src = model_source(config, model)
    if "pretrain" in config["models"][model] or Path(src).exists():
        inputs["backbone"] = src
    return inputs


def cache_slice(config: dict, split: str) -> dict:
    """Hidden-state cache slice: which split, how many clips, batch size. The training and
    testing splits have their own clip counts (``cache.train_clips``, ``cache.test_clips``);
    validation uses ``cache.clips``. Each slice holds only its own count, so changing one
    never reruns the other splits' caches."""
    cache = config["cache"]
    clips = cache.get(_CACHE_CLIPS_KEY[split], cache["clips"])
    return {"split": split, "clips": clips, "batch_size": cache["batch_size"]}


def cache_inputs(model: str, results: str = RESULTS) -> dict[str, str]:
    return {
        "model": paths.path("finetuned", results, model=model),
        "manifest": paths.path("manifest", results),
    }


def cells(config: dict) -> list[dict[str, str]]:
    """The baseline cells: one per model."""
    return [{"model": m} for m in config["models"]]


def cell_paths(config: dict, results: str = RESULTS) -> list[str]:
    return [paths.path("baseline_cell", results, **c) for c in cells(config)]


def wildcard_constraints(config: dict) -> dict[str, str]:
    return {
        "model": "|".join(map(re.escape, config["models"])) or "NO_MODEL",
        "split": "|".join(SPLITS),
    }


def pretrained_targets(config: dict) -> list[str]:
    return [model_source(config, m) for m in pretrained(config)]


def cache_targets(config: dict, results: str = RESULTS) -> list[str]:
    """The validation caches (the other splits' caches come with the stages that read them)."""
    return [paths.path("cache", results, model=m, split="validation") for m in config["models"]]


def config_problems(config: dict) -> list[str]:
    """A pretrain spec whose attention heads do not divide its hidden size."""
    problems = []
    for name, spec in (config.get("models") or {}).items():
        p = spec.get("pretrain")
        if p and p["hidden"] % p["heads"]:
            problems.append(
                f"config.models.{name}.pretrain.heads: {p['heads']} does not divide hidden "
                f"{p['hidden']}"
            )
    return problems
