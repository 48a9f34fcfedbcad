"""The data stage's plan (``rules/data.smk``): the synthetic corpus (unless ``data.root`` is
set) and the checked manifest. Torch-free: Snakemake imports it on every run."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.core import paths
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.data.corpus import SPEECH_COMMANDS_WORDS
from workflow_scripts.data.corpus import config_problems as corpus_problems


def data_root(config: dict, results: str = RESULTS) -> str:
    """The Speech Commands folder every data job reads: ``data.root`` or the synthetic corpus."""
    return config["data"]["root"] or paths.path("corpus", results)


def words(config: dict) -> list[str]:
    """The task's label set: ``corpus.words`` or all 35 Speech Commands words."""
    return list(config["corpus"]["words"] or SPEECH_COMMANDS_WORDS)


def corpus_slice(config: dict) -> dict:
    """The synthesis job's slice: the whole corpus section, and nothing else."""
    return config["corpus"]


def manifest_slice(config: dict, results: str = RESULTS) -> dict:
    """The manifest's slice: where the data is and which words form the task."""
    return {"root": data_root(config, results), "words": config["corpus"]["words"]}


def manifest_inputs(config: dict, results: str = RESULTS) -> dict[str, str]:
    """The corpus folder the manifest reads: the synthetic corpus (a rule output) or
    ``data.root`` when it exists here. A ``data.root`` absent on this host is not a file
    input, so a dry run plans the grid without the data; the manifest job then stops with
    the missing path."""
    root = data_root(config, results)
    if not config["data"]["root"] or Path(root).exists():
        return {"root": root}
    return {}


def targets(config: dict, results: str = RESULTS) -> list[str]:
    return [paths.path("manifest", results)]


def config_problems(config: dict) -> list[str]:
    """Relations between corpus keys that the schema cannot express."""
    return corpus_problems(config.get("corpus", {}))
