"""The SpeechLLM stage's speech splits made from real corpora (``speechllm.speech.source:
corpora``): which tasks a split holds, each task's corpus part, the split's slice and the
corpus files that are its source inputs (the rules in ``rules/speechllm.smk``; the readers:
:mod:`workflow_scripts.speechllm.corpora`)."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.core.paths import RESULTS
from workflow_scripts.core.sources import Source
from workflow_scripts.speechllm.plan import (
    section,
    speech_source,
    split_utterances,
    tasks,
    trained_speechllms,
)
from workflow_scripts.speechllm.settings import resolve_train
from workflow_scripts.speechllm.text import TASKS

#: The corpus readers of ``speechllm.speech.corpora`` (``speechllm.corpora``), each with the
#: key of a split entry that names its part: a LibriSpeech subset folder, a CoVoST TSV.
CORPUS_READERS = {"librispeech": "subset", "covost": "tsv"}


def corpus_tasks(config: dict) -> list[str]:
    """The tasks a split made from the corpora holds utterances of: the cells' tasks and every
    trained SpeechLLM's, in :data:`TASKS` order."""
    want = set(tasks(config))
    for m in trained_speechllms(config):
        want |= set(resolve_train(section(config)["models"][m]["train"])["tasks"])
    return [t for t in TASKS if t in want]


def corpus_parts(config: dict, split: str) -> dict[str, dict]:
    """task -> the corpus part its utterances of ``split`` come from: ``{"corpus", "reader",
    "root", "subset" | "tsv"}`` (entries the config lacks are left out; config_problems names
    them)."""
    sp = section(config).get("speech") or {}
    out = {}
    for task in corpus_tasks(config):
        entry = ((sp.get("splits") or {}).get(task) or {}).get(split)
        corpus = (sp.get("corpora") or {}).get((entry or {}).get("corpus")) or {}
        key = CORPUS_READERS.get(corpus.get("reader"))
        if entry and key:
            out[task] = {"corpus": entry["corpus"], "reader": corpus["reader"],
                         "root": str(corpus["root"]), key: entry.get(key)}  # fmt: skip
    return out


def corpus_slice(config: dict, split: str) -> dict:
    """A speech split's slice when it is made from the corpora: the split, its utterance cap
    (per task) and each task's corpus part."""
    return {"split": split, "utterances": section(config)["speech"]["utterances"][split],
            "parts": corpus_parts(config, split)}  # fmt: skip


def speech_inputs(config: dict, results: str = RESULTS, *, split: str) -> dict:
    """The corpus files that say which utterances a split made from the corpora holds, as
    :class:`~workflow_scripts.core.sources.Source` inputs (their digests rerun the split):
    a LibriSpeech subset's ``*.trans.txt`` files, a CoVoST TSV. The audio is not hashed (a
    corpus release's clips do not change; Common Voice's clips folder holds a million files).
    A root absent on this host gives no input, so a dry run plans the grid without the data;
    the job then stops naming the missing path (``make preflight`` names the key)."""
    if speech_source(config) != "corpora" or not split_utterances(config, split):
        return {}
    out = {}
    for task, part in corpus_parts(config, split).items():
        root = Path(part["root"])
        if part["reader"] == "librispeech":
            files = sorted(str(p) for p in (root / part["subset"]).glob("*/*/*.trans.txt"))
        else:
            tsv = Path(part["tsv"]) if Path(part["tsv"]).is_absolute() else root / part["tsv"]
            files = [str(tsv)] if tsv.is_file() else []
        if files:
            out[f"{task}_corpus"] = [Source(f) for f in files]
    return out
