"""Helpers shared by all rules - config validation and per-cell params."""

import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from workflow_scripts.core.config import ConfigError, cell_json, validate_config

# The grid registries that a --configfile (or --config) replaces instead of merging into
# config.yaml's: `--configfile config/paper.yaml` runs the paper's models, metrics, strategies
# and mimickers only, not those plus the defaults.
GRID_KEYS = (
    ("models",),
    ("similarity", "metrics"),
    ("pruning", "strategies"),
    ("mimic", "types"),
)


def replace_grid_keys(cfg, overrides):
    """Set each grid registry present in ``overrides`` (the command line's configfiles and
    --config, merged) to exactly its value there. Snakemake merges dicts recursively."""
    import copy

    for path in GRID_KEYS:
        src, dst = overrides, cfg
        for key in path[:-1]:
            src = src.get(key) if isinstance(src, dict) else None
            dst = dst.setdefault(key, {})
        if isinstance(src, dict) and path[-1] in src:
            dst[path[-1]] = copy.deepcopy(src[path[-1]])


replace_grid_keys(config, workflow.config_settings.overwrite_config or {})

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


def model_params(model):
    """Estimated parameter count of a configured model (workflow_scripts.core.resources)."""
    from workflow_scripts.core.resources import estimate_params

    return estimate_params(config["models"][model])


def model_mem_mb(base_mb, mb_per_mparam=40):
    """A `mem_mb` resource for a model job: base + per million parameters (or the model's
    `resources.mem_mb`), times the attempt (retries ask for more)."""
    from workflow_scripts.core.resources import mem_mb

    def mem(wildcards, attempt):
        spec = config["models"][wildcards.model]
        override = spec.get("resources", {}).get("mem_mb")
        return mem_mb(
            model_params(wildcards.model), base_mb, mb_per_mparam, attempt, override
        )

    return mem


def model_runtime(base_min):
    """A `runtime` resource (minutes) for a model job: base_min for a base-sized model, in
    proportion to the parameter count above it (or the model's `resources.runtime`), times
    the attempt."""
    from workflow_scripts.core.resources import runtime_min

    def runtime(wildcards, attempt):
        spec = config["models"][wildcards.model]
        override = spec.get("resources", {}).get("runtime")
        return runtime_min(model_params(wildcards.model), base_min, attempt, override)

    return runtime


def attempt_mem_mb(base_mb):
    """A `mem_mb` resource for a job without a model: base_mb times the attempt."""
    return lambda wildcards, attempt: base_mb * attempt


def manifest_inputs(wildcards):
    """The corpus folder the manifest reads: the synthetic corpus (a rule output) or data.root
    when it exists here. A data.root that is absent on this host is not a file input, so
    that a dry run plans the grid without the data; the manifest job itself then stops with
    the missing path."""
    root = data_root()
    if not config["data"]["root"] or Path(root).exists():
        return {"root": root}
    return {}


def words():
    from workflow_scripts.data.corpus import SPEECH_COMMANDS_WORDS

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
    from workflow_scripts.backbones.finetune import resolve_finetune

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
        from workflow_scripts.pruning.cells import targets as pruning_targets

        targets += pruning_targets(config, RESULTS)
    if "mimic" in outputs:
        from workflow_scripts.mimic.cells import targets as mimic_targets

        targets += mimic_targets(config, RESULTS)
    if "structured" in outputs:
        from workflow_scripts.structured.cells import targets as structured_targets

        targets += structured_targets(config, RESULTS)
    if "tables" in outputs:
        from workflow_scripts.report.aggregate import targets as aggregate_targets

        targets += aggregate_targets(config, RESULTS)
    return targets
