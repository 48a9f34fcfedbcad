"""Helpers shared by all rules - config validation and per-cell params."""

import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from workflow_scripts.config import ConfigError, cell_json, validate_config

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
SYNTH_ROOT = f"{RESULTS}/corpus/speech_commands_v0.02"


def data_root():
    """The Speech Commands directory that data jobs read (real or synthetic)."""
    return config["data"]["root"] or SYNTH_ROOT


def corpus_cell():
    """Corpus config slice (the whole corpus section, and nothing else)."""
    return cell_json(config["corpus"])


def manifest_cell():
    """Manifest slice: where the data is and which words form the task."""
    return cell_json({"root": data_root(), "words": config["corpus"]["words"]})


PRETRAINED = [m for m, spec in config["models"].items() if "pretrain" in spec]


def model_pattern():
    """Regex of the configured model names (a wildcard constraint)."""
    return "|".join(map(re.escape, config["models"])) or "NO_MODEL"


def pretrain_cell(model):
    """Pretraining slice: that model's pretrain spec only."""
    return cell_json(config["models"][model]["pretrain"])


def gpu_request(wildcards):
    """GPUs a model job asks for: the model's `resources.gpu`, else 0 (CPU)."""
    spec = config["models"].get(getattr(wildcards, "model", ""), {})
    return spec.get("resources", {}).get("gpu", 0)


def words():
    from workflow_scripts.corpus import SPEECH_COMMANDS_WORDS

    return list(config["corpus"]["words"] or SPEECH_COMMANDS_WORDS)


def model_source(model):
    """Where a model's weights come from: its `hf` id/path or its pretraining output."""
    spec = config["models"][model]
    if "pretrain" in spec:
        return f"{config['pretrained_dir']}/{model}"
    return spec["hf"]


def finetune_inputs(wildcards):
    """The manifest, plus the backbone folder when it is a local path or a pretraining output
    (a hub id is fetched by transformers and is not a file input)."""
    inputs = {"manifest": f"{RESULTS}/data/manifest.parquet"}
    src = model_source(wildcards.model)
    if "pretrain" in config["models"][wildcards.model] or Path(src).exists():
        inputs["backbone"] = src
    return inputs


def finetune_cell(model):
    """Fine-tuning slice: the backbone source, the resolved settings and the label set."""
    from workflow_scripts.finetune import resolve_finetune

    spec = config["models"][model]
    return cell_json(
        {
            "source": model_source(model),
            "finetune": resolve_finetune(config.get("finetune"), spec.get("finetune")),
            "labels": words(),
        }
    )


def cache_cell(split):
    """Hidden-state cache slice: which split, how many clips, batch size. The training and
    testing splits (the mimickers' fitting and test data) have their own clip counts,
    `cache.train_clips` and `cache.test_clips`; validation uses `cache.clips`. Each slice
    holds only its own count, so changing one never reruns the other splits' caches."""
    cache = config["cache"]
    key = {"training": "train_clips", "testing": "test_clips"}.get(split, "clips")
    clips = cache.get(key, cache["clips"])
    batch_size = cache["batch_size"]
    return cell_json({"split": split, "clips": clips, "batch_size": batch_size})


def similarity_cell(metric):
    """Similarity slice: one metric's params plus the sampling settings."""
    sim = config["similarity"]
    return cell_json(
        {
            "metric": metric,
            "params": sim["metrics"][metric],
            "clips": sim["clips"],
            "n_boot": sim["n_boot"],
            "seed": sim["seed"],
        }
    )


def similarity_cells():
    return [
        f"{RESULTS}/cells/similarity/{m}/{metric}.parquet"
        for m in config["models"]
        for metric in config["similarity"]["metrics"]
    ]


def all_targets():
    outputs = set(config["outputs"])
    targets = []
    if "manifest" in outputs:
        targets.append(f"{RESULTS}/data/manifest.parquet")
    if "pretrained" in outputs:
        targets += [f"{config['pretrained_dir']}/{m}" for m in PRETRAINED]
    if "baseline" in outputs:
        targets += [f"{RESULTS}/cells/baseline/{m}.parquet" for m in config["models"]]
    if "cache" in outputs:
        targets += [
            f"{RESULTS}/cache/{m}/validation.safetensors" for m in config["models"]
        ]
    if "similarity" in outputs:
        targets += similarity_cells()
        targets += [f"{RESULTS}/tables/blocks.csv", f"{RESULTS}/charts/similarity.html"]
    if "pruning" in outputs:
        from workflow_scripts.pruning_cells import targets as pruning_targets

        targets += pruning_targets(config, RESULTS)
    if "mimic" in outputs:
        from workflow_scripts.mimic_cells import targets as mimic_targets

        targets += mimic_targets(config, RESULTS)
    return targets
