"""The whole grid: each stage's plan module, one config validation, and what ``rule all`` builds.

Every stage has a torch-free ``workflow_scripts/<stage>/plan.py`` (its cells, their config
slices and inputs, its targets, its config checks); this module only strings them together.
"""

from __future__ import annotations

import copy
import importlib
from types import ModuleType

from workflow_scripts.core.config import ConfigError, validate_config
from workflow_scripts.core.paths import RESULTS

STAGES = (
    "data",
    "backbones",
    "similarity",
    "pruning",
    "mimic",
    "structured",
    "report",
    "speechllm",
)

# `config.outputs` family -> (stage, the plan function listing its targets).
OUTPUTS = {
    "manifest": ("data", "targets"),
    "pretrained": ("backbones", "pretrained_targets"),
    "baseline": ("backbones", "cell_paths"),
    "cache": ("backbones", "cache_targets"),
    "similarity": ("similarity", "targets"),
    "pruning": ("pruning", "targets"),
    "mimic": ("mimic", "targets"),
    "structured": ("structured", "targets"),
    "tables": ("report", "targets"),
    "speechllm": ("speechllm", "targets"),
    "speechllm_pretrained": ("speechllm", "pretrained_targets"),
}


# The grid registries that a --configfile (or --config) replaces instead of merging into
# config.yaml's: `--configfile config/paper.yaml` runs the paper's models, metrics, strategies
# and mimickers only, not those plus the defaults.
GRID_KEYS = (
    ("models",),
    ("similarity", "metrics"),
    ("pruning", "strategies"),
    ("mimic", "types"),
    ("speechllm", "models"),
    ("speechllm", "decoders"),
    ("speechllm", "pruning", "strategies"),
    ("speechllm", "speech", "corpora"),  # a site file sets the roots of the grid's corpora
)


def replace_grid_keys(cfg: dict, overrides: dict) -> None:
    """Set each grid registry present in ``overrides`` (the command line's configfiles and
    --config, merged) to exactly its value there (Snakemake merges dicts recursively)."""
    for key_path in GRID_KEYS:
        src, dst = overrides, cfg
        for key in key_path[:-1]:
            src = src.get(key) if isinstance(src, dict) else None
            dst = dst.setdefault(key, {})
        if isinstance(src, dict) and key_path[-1] in src:
            dst[key_path[-1]] = copy.deepcopy(src[key_path[-1]])


# Lists that several --configfile files unite instead of the later one replacing the earlier
# (Snakemake's rule for lists): `--configfile config/paper.yaml config/speechllm-paper.yaml`
# runs both files' result families, i.e. both grids. The registries (GRID_KEYS) are mappings,
# which Snakemake already merges across the files.
UNITED_KEYS = ("outputs",)


def command_line_overrides(configfiles, config_args: dict | None = None) -> dict:
    """The command line's config as the workflow sees it: each of ``configfiles`` merged over
    the previous ones (Snakemake's ``update_config``), the :data:`UNITED_KEYS` lists united
    (in order, each value once), then ``config_args`` (``--config``; it replaces)."""
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    merged: dict = {}
    united: dict[str, list] = {}
    for f in configfiles:
        loaded = load_configfile(str(f)) or {}
        update_config(merged, copy.deepcopy(loaded))
        for key in UNITED_KEYS:
            if isinstance(loaded.get(key), list):
                seen = united.setdefault(key, [])
                seen += [v for v in loaded[key] if v not in seen]
    merged.update(copy.deepcopy(united))
    if config_args:
        update_config(merged, copy.deepcopy(dict(config_args)))
    return merged


def unite_configfiles(config_settings) -> None:
    """The Snakefile's hook, before the config is assembled: Snakemake's merged command-line
    config (``workflow.config_settings.overwrite_config``) gets the :data:`UNITED_KEYS` lists
    of every ``--configfile`` united (:func:`command_line_overrides`)."""
    files = list(config_settings.configfiles or [])
    if len(files) < 2:
        return
    overrides = config_settings.overwrite_config
    united = command_line_overrides(files, getattr(config_settings, "config", None))
    for key in UNITED_KEYS:
        if key in united:
            overrides[key] = united[key]


def site_settings(site_config: dict, config: dict) -> dict:
    """The site file's config keys as they apply to this grid: a model, SpeechLLM, decoder or
    SpeechLLM corpus entry only for a name the grid has (a site file may list local folders for
    every model and corpus it ever runs; naming one never adds it to a grid)."""
    out = copy.deepcopy(site_config)
    for key_path in GRID_KEYS:
        src, dst = out, config
        for key in key_path[:-1]:
            src = src.get(key) if isinstance(src, dict) else None
            dst = dst.get(key) if isinstance(dst, dict) else None
        if isinstance(src, dict) and isinstance(src.get(key_path[-1]), dict):
            have = (dst or {}).get(key_path[-1]) or {}
            src[key_path[-1]] = {k: v for k, v in src[key_path[-1]].items() if k in have}
    return out


def assemble(config: dict, site_config: dict, overrides: dict,
             command_line: dict | None = None) -> dict:  # fmt: skip
    """The run's config, in place: config.yaml (``config``) < the ``--configfile`` files and
    ``--config`` (``overrides``, merged by Snakemake), whose grid registries replace rather
    than merge < config/site.yaml (``site_config``: the machine's settings - data roots, local
    model folders, the results root (``$LAYER_REDUNDANCY_RESULTS`` over the file's
    ``results_dir``) - win over every shipped grid config, so no tracked file is edited) < the
    ``--config`` key=value pairs (``command_line``), which win over everything."""
    from snakemake.utils import update_config

    update_config(config, copy.deepcopy(overrides))
    replace_grid_keys(config, overrides)
    update_config(config, site_settings(site_config, config))
    update_config(config, copy.deepcopy(dict(command_line or {})))
    return config


def plan(stage: str) -> ModuleType:
    """The plan module of ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
    return importlib.import_module(f"workflow_scripts.{stage}.plan")


def validate(config: dict) -> dict:
    """Validate ``config`` in place before any job runs: the JSON schema (filling defaults;
    the results root resolved), then every stage's cross-field checks. Raises ConfigError
    naming each bad key."""
    validate_config(config)
    problems = [p for stage in STAGES for p in plan(stage).config_problems(config)]
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


def targets(config: dict, results: str = RESULTS) -> list[str]:
    """Everything ``rule all`` builds: the targets of each family in ``config.outputs``."""
    out: list[str] = []
    for family, (stage, fn) in OUTPUTS.items():
        if family in config["outputs"]:
            kwargs = {} if fn == "pretrained_targets" else {"results": results}
            out += getattr(plan(stage), fn)(config, **kwargs)
    return list(dict.fromkeys(out))
