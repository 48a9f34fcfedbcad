"""The backbone stage's plan (``rules/pretrain.smk``, ``rules/backbones.smk``): pretraining
of the small shipped backbones, keyword fine-tuning with its baseline cell per model, and the
hidden-state caches. Torch-free: Snakemake imports it on every run, and jobs import its
run-time helpers (``resolve_finetune``, ``layer_fraction``, ``resolve_states``). What the
caches store, as the whole grid asks, is planned in the plan-only
:mod:`workflow_scripts.backbones.cache_plan`, which no job imports."""

from __future__ import annotations

import re

from workflow_scripts.core import paths
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.core.sources import local_model
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
# Which clip count of `cache` the training and validation caches hold (the testing cache
# holds the evaluation set: :func:`test_clips`).
_CACHE_CLIPS_KEY = {"training": "train_clips", "validation": "clips"}


def test_clips(config: dict) -> int | None:
    """The one evaluation set's size, ``evaluation.test_clips`` (None = the whole testing
    split): the baseline cell's test accuracy, the testing-split cache (the mimic cells' test
    data), the pruning and structured cells all read the first that many clips of
    ``data.loader.split_rows(manifest, "testing", n)``."""
    return config["evaluation"]["test_clips"]


def cache_clips(config: dict, split: str) -> int | None:
    """Clips one split's cache holds: ``cache.clips`` (validation), ``cache.train_clips``
    (training), the evaluation set (testing, :func:`test_clips`)."""
    if split == "testing":
        return test_clips(config)
    return config["cache"][_CACHE_CLIPS_KEY[split]]


def resolve_finetune(global_spec: dict | None, model_spec: dict | None) -> dict:
    """Defaults < the config's top-level ``finetune`` < the model's own ``finetune``.
    ``accumulation`` 1 (the default: one micro-batch per step, the computation from before the
    key existed) is left out, so the fine-tuning slices and finished models stay current."""
    spec = {**DEFAULT_FINETUNE, **(global_spec or {}), **(model_spec or {})}
    if spec.get("accumulation", 1) == 1:
        spec.pop("accumulation", None)
    return spec


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
        "test_clips": test_clips(config),
    }


def finetune_inputs(config: dict, model: str, results: str = RESULTS) -> dict[str, str]:
    """The manifest, plus the backbone: its pretraining output (a folder a rule makes), or the
    weight and config files of a local folder as :class:`~workflow_scripts.core.sources.Source`
    inputs (their digests rerun it, see :mod:`workflow_scripts.core.sources`); a hub id is
    fetched by transformers and is not a file input."""
    inputs = {"manifest": paths.path("manifest", results)}
    src = model_source(config, model)
    if "pretrain" in config["models"][model]:
        inputs["backbone"] = src
    elif files := local_model(src):
        inputs["backbone"] = files
    return inputs


# Hidden-state indices relative to a model's depth L, as stages ask for them before the model
# is loaded: token -> (k, d) meaning layer_fraction(k, d, L).
STATE_TOKENS = {"L": (1, 1), "L/2": (1, 2), "L/3": (1, 3), "2L/3": (2, 3)}


def layer_fraction(k: int, d: int, n_layers: int) -> int:
    """The hidden-state index about ``k/d`` of the way up a stack of ``n_layers`` blocks:
    ``round(k * n_layers / d)`` (Python's rounding, half to even), at least 1 (never the
    stack's input). The one rounding of every "L/3, L/2, 2L/3" target: the caches' state
    tokens, the structured stage's distilled layers and the mimickers' evenly spaced
    targets, so that a cache stores the very state a stage reads."""
    return max(1, int(round(k * n_layers / d)))


def resolve_states(states, n_layers: int) -> list[int]:
    """Concrete hidden-state indices of a cache's ``states`` (``"all"`` or a list of indices
    and :data:`STATE_TOKENS`) for a model of ``n_layers`` blocks."""
    if states == "all":
        return list(range(n_layers + 1))
    out = set()
    for s in states:
        if isinstance(s, str):
            s = layer_fraction(*STATE_TOKENS[s], n_layers)
        out.add(int(s))
    return sorted(out)


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


def architecture(config: dict, model: str) -> dict:
    """A model's architecture in transformers' config keys, as far as it is known without
    loading it (its ``config.json``, pretrain spec or the hub architectures table)."""
    from workflow_scripts.core import resources
    from workflow_scripts.core.config import model_config

    spec = config["models"][model]
    cfg = model_config(spec)
    if cfg is None and "hf" in spec:
        arch = resources.hub_architectures().get(str(spec["hf"]))
        cfg = dict(arch["config"]) if arch else {}
    return cfg or {}


def split_size(config: dict, split: str, limit: int | None = None,
               results: str = RESULTS) -> int:  # fmt: skip
    """Clips a job reads of ``split``: the manifest's count (or its estimate), capped by
    ``limit`` (None = the whole split)."""
    from workflow_scripts.core import sizes

    n = sizes.split_clips(config, split, paths.path("manifest", results))
    return sizes.limited(n, limit)


def finetune_bytes(config: dict, model: str, results: str = RESULTS, **_wildcards) -> int:
    """Disk of a fine-tuning job: the saved model, plus the frozen CNN's features of the
    training split while it runs (``cache_features``)."""
    from workflow_scripts.core import sizes

    spec = finetune_slice(config, model)["finetune"]
    dims = sizes.model_dims(config["models"][model])
    total = sizes.model_bytes(dims["params"])
    if spec.get("cache_features", True) and spec.get("freeze_feature_encoder", True):
        conv = architecture(config, model).get("conv_dim") or [512]
        total += 2 * split_size(config, "training", None, results) * conv[-1] * dims["frames"]
    return total


def model_bytes(config: dict, model: str, results: str = RESULTS, **_wildcards) -> int:
    """A ``save_pretrained`` folder of the model (a pretrained backbone, or a structured-pruned
    copy, which is at most as large)."""
    from workflow_scripts.core import sizes

    return sizes.model_bytes(sizes.model_dims(config["models"][model])["params"])
