"""The SpeechLLM stage's cross-field config checks that need more than one key (each problem
names its key), called by :func:`workflow_scripts.speechllm.plan.config_problems`: the text
and the tasks each SpeechLLM was trained for, and the real-corpus speech splits."""

from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.speechllm.corpus_plan import CORPUS_READERS, corpus_tasks
from workflow_scripts.speechllm.plan import (
    pretrained_decoders,
    section,
    speech_source,
    split_utterances,
    tasks,
    text_slice,
    trained_speechllms,
)
from workflow_scripts.speechllm.settings import resolve_train
from workflow_scripts.speechllm.text import SPLITS


def corpus_problems(config: dict) -> list[str]:
    """With ``speech.source: corpora``: a corpus part for every task of :func:`corpus_tasks`
    and every split with utterances, naming a corpus of ``speech.corpora`` with the key its
    reader needs; translation tasks only from a corpus with translations (CoVoST); no SpeechLLM
    trained on the small decoder's command-language vocabulary."""
    if speech_source(config) != "corpora":
        return []
    s, where, problems = section(config), "config.speechllm.speech", []
    corpora, splits = s["speech"].get("corpora") or {}, s["speech"].get("splits") or {}
    for task in corpus_tasks(config):
        for split in SPLITS:
            entry = (splits.get(task) or {}).get(split)
            at = f"{where}.splits.{task}.{split}"
            if not split_utterances(config, split):
                continue
            if entry is None:
                problems.append(f"{at}: missing; with source: corpora every task of the cells "
                                f"and of the trained SpeechLLMs ({corpus_tasks(config)}) needs "
                                "a corpus part for every split with utterances")  # fmt: skip
                continue
            corpus = corpora.get(entry["corpus"])
            if corpus is None:
                problems.append(f"{at}.corpus: {entry['corpus']!r} is not one of "
                                f"{where}.corpora {sorted(corpora)}")  # fmt: skip
                continue
            reader = corpus["reader"]
            key = CORPUS_READERS[reader]
            if not entry.get(key):
                problems.append(f"{at}: the {reader} corpus {entry['corpus']!r} needs `{key}`")
            if wrong := [k for k in CORPUS_READERS.values() if k != key and k in entry]:
                problems.append(f"{at}: {wrong} are no keys of a {reader} part (it takes "
                                f"`{key}`)")  # fmt: skip
            if task != "asr" and reader != "covost":
                problems.append(f"{at}: {task} needs translations; {reader} has none (a "
                                "covost corpus has)")  # fmt: skip
    for m in trained_speechllms(config):
        dec = resolve_train(s["models"][m]["train"])["decoder"]
        if dec in pretrained_decoders(config):
            problems.append(f"config.speechllm.models.{m}.train.decoder: {dec!r} is a small "
                            "decoder pretrained on the command language (a word vocabulary "
                            f"of its sentences); {where}.source: corpora needs a decoder "
                            "with a real tokenizer (an `hf` decoder or hub id)")  # fmt: skip
    return problems


def local_prompts(folder: str) -> list[str] | None:
    """The tasks a SpeechLLM folder's ``config.json`` has prompts for (None: no such file)."""
    f = Path(folder) / "config.json"
    return list(json.loads(f.read_text()).get("prompts") or {}) if f.is_file() else None


def text_and_task_problems(config: dict) -> list[str]:
    """The extra test sentences (a readable file of sentences of the language, in neither
    held-out set) and the tasks: every cell task is one each SpeechLLM was trained for (a
    ``train`` spec's ``tasks``, a local folder's prompts), and a SpeechLLM on the small
    decoder's token prompts only has tasks its pretrained decoder learnt (its ``tasks``)."""
    from workflow_scripts.speechllm.settings import PRETRAIN_TASKS
    from workflow_scripts.speechllm.text import Sentences

    s, where, problems = section(config), "config.speechllm", []
    try:
        Sentences(text_slice(config))
    except ValueError as e:
        problems.append(f"{where}.text.extra_test_sentences: {e}")
    want = tasks(config)
    decoders = s.get("decoders") or {}
    for m, spec in (s.get("models") or {}).items():
        if "train" in spec:
            t = resolve_train(spec["train"])
            if missing := [x for x in want if x not in t["tasks"]]:
                problems.append(f"{where}.models.{m}.train.tasks: {t['tasks']} lacks "
                                f"{missing} of {where}.tasks")  # fmt: skip
            dec = decoders.get(t["decoder"]) or {}
            if t["prompts"] is None and "pretrain" in dec:
                learnt = dec["pretrain"].get("tasks") or list(PRETRAIN_TASKS)
                if missing := [x for x in t["tasks"] if x not in learnt]:
                    problems.append(
                        f"{where}.models.{m}.train.tasks: {missing} are not tasks of its "
                        f"decoder {t['decoder']!r} (its pretrain.tasks: {learnt})"
                    )
            if t["prompts"] is not None:
                if missing := [x for x in t["tasks"] if x not in t["prompts"]]:
                    problems.append(f"{where}.models.{m}.train.prompts: no prompt for {missing}")
        elif (have := local_prompts(spec["hf"])) is not None:
            if missing := [x for x in want if x not in have]:
                problems.append(f"{where}.models.{m}: {spec['hf']} was trained for {have}, "
                                f"not for {missing} of {where}.tasks")  # fmt: skip
    return problems
