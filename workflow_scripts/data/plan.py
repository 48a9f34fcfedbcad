"""The data stage's plan (``rules/data.smk``): the synthetic corpus (unless ``data.root`` is
set) and the checked manifest. Torch-free: Snakemake imports it on every run."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.core import paths
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.core.sources import Source
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
    the missing path. A real ``data.root`` is a
    :class:`~workflow_scripts.core.sources.Source`: its files' digests rerun the manifest."""
    root = data_root(config, results)
    if not config["data"]["root"]:
        return {"root": root}
    return {"root": Source(root)} if Path(root).exists() else {}


def targets(config: dict, results: str = RESULTS) -> list[str]:
    return [paths.path("manifest", results)]


def config_problems(config: dict) -> list[str]:
    """Relations between corpus keys that the schema cannot express."""
    return corpus_problems(config.get("corpus", {}))


def corpus_bytes(config: dict, results: str = RESULTS) -> int:
    """The synthetic corpus: 16-bit mono 1-s wav files (32 KB each) plus the noise folder."""
    c = config["corpus"]
    clips = c["speakers"] * len(words(config)) * c.get("repeats", 1)
    return clips * (2 * 16_000 + 44) + 10_000_000
