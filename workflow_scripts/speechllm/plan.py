"""The SpeechLLM stage's plan (``rules/speechllm.smk``); torch-free (Snakemake imports it).

Jobs:

* ``speechllm_speech`` per split: the spoken command sentences (``speechllm/speech/{split}``),
  or with ``speechllm.speech.source: corpora`` each task's utterances of real corpora
  (:mod:`.corpus_plan`: the split's slice, the corpus files as sources);
* ``speechllm_decoder`` per decoder with a ``pretrain`` spec and ``speechllm_train`` per
  SpeechLLM with a ``train`` spec: written to ``{pretrained_dir}/{name}`` (the family
  ``speechllm_pretrained``; ``config/pretrain_speechllm.yaml`` regenerates ``models/``);
* ``speechllm_features`` per SpeechLLM x split: the frozen encoder's features;
* the cells (family ``speechllm``): similarity ``{sllm}/{task}-{input}`` and pruning
  ``{sllm}/{task}-{strategy}``, then ``speechllm_tables``.

Wildcards: ``sllm`` (a SpeechLLM of ``speechllm.models``), ``decoder``, ``task``, ``input``,
``strategy``, ``split``. The rules' disk estimates are in :mod:`.disk_plan`, the cross-field
config checks beyond this module's in :mod:`.checks`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from workflow_scripts.core import paths
from workflow_scripts.core.paths import RESULTS
from workflow_scripts.core.sources import Source, local_model
from workflow_scripts.pruning import strategies as registry
from workflow_scripts.speechllm.settings import (
    HEAL_BUDGET,
    HEAL_CONTROL,
    HEAL_DEFAULTS,
    HEAL_JOINT,
    INPUTS,
    REDUCE,
    SCORED,
    STRATEGIES,
    resolve_train,
)
from workflow_scripts.speechllm.text import SPLITS, TASKS, extra_test_sentences


def section(config: dict) -> dict:
    return config.get("speechllm") or {}


def speechllms(config: dict) -> list[str]:
    return list(section(config).get("models") or {})


def tasks(config: dict) -> list[str]:
    return [t for t in TASKS if t in section(config).get("tasks", [])]


def strategies(config: dict) -> list[str]:
    """The configured decoder strategies, in registry order."""
    chosen = (section(config).get("pruning") or {}).get("strategies") or {}
    return [s for s in registry.STRATEGIES if s in chosen]


def inputs(config: dict) -> list[str]:
    return [i for i in INPUTS if i in (section(config).get("similarity") or {}).get("inputs", [])]


# ----------------------------------------------------------------------------------------
# Models: where they come from
# ----------------------------------------------------------------------------------------
def _out_dir(config: dict, name: str) -> str:
    return f"{config['pretrained_dir']}/{name}"


def decoder_source(config: dict, name: str) -> str:
    """A decoder reference: a ``speechllm.decoders`` entry (its ``hf``, or its pretraining
    output) or, for any other name, a folder or hub id as it is."""
    spec = (section(config).get("decoders") or {}).get(name)
    if spec is None:
        return name
    return _out_dir(config, name) if "pretrain" in spec else spec["hf"]


def encoder_source(config: dict, name: str) -> str:
    """An encoder reference: a ``models`` entry with ``hf`` (its source) or, for any other
    name, a folder or hub id as it is."""
    spec = (config.get("models") or {}).get(name)
    return spec["hf"] if spec and "hf" in spec else name


def model_source(config: dict, sllm: str) -> str:
    """A SpeechLLM folder: its ``hf`` or its training output."""
    spec = section(config)["models"][sllm]
    return _out_dir(config, sllm) if "train" in spec else spec["hf"]


def pretrained_decoders(config: dict) -> list[str]:
    return [d for d, s in (section(config).get("decoders") or {}).items() if "pretrain" in s]


def trained_speechllms(config: dict) -> list[str]:
    return [m for m, s in (section(config).get("models") or {}).items() if "train" in s]


def pretrained_targets(config: dict) -> list[str]:
    """The family ``speechllm_pretrained``: every decoder and SpeechLLM the workflow trains."""
    names = pretrained_decoders(config) + trained_speechllms(config)
    return [_out_dir(config, n) for n in names]


def text_slice(config: dict) -> dict:
    """The text config as the jobs read it: ``extra_test_sentences`` (a file) replaced by its
    sentences, so that editing the file reruns what depends on it (the speech splits, the
    decoders' pretraining); without them, the config as it is."""
    text = dict(section(config)["text"])
    if text.get("extra_test_sentences"):
        text["extra_test_sentences"] = extra_test_sentences(text)
    return text


def speech_slice(config: dict, split: str) -> dict:
    """A speech split's slice: the corpus's sessions and augmentations, the text config, the
    speech seed and augmentation switch, the split's utterance count."""
    s = section(config)
    sp = s["speech"]
    return {"split": split, "utterances": sp["utterances"][split], "seed": sp["seed"],
            "augment": sp["augment"], "sessions": sp["sessions"], "text": text_slice(config),
            "corpus": config["corpus"]}  # fmt: skip


def split_utterances(config: dict, split: str) -> int:
    """The utterances ``speechllm.speech.utterances`` asks of a speech split (0 when none)."""
    return int((section(config).get("speech") or {}).get("utterances", {}).get(split) or 0)


def speech_source(config: dict) -> str:
    """Where the speech splits come from: ``synthetic`` (espeak-ng command sentences) or
    ``corpora`` (``speechllm.speech.corpora`` / ``splits``)."""
    return (section(config).get("speech") or {}).get("source") or "synthetic"


def decoder_slice(config: dict, decoder: str) -> dict:
    """A decoder's pretraining slice: its ``pretrain`` spec and the text config."""
    s = section(config)
    return {"pretrain": s["decoders"][decoder]["pretrain"], "text": text_slice(config)}


def train_slice(config: dict, sllm: str) -> dict:
    """A SpeechLLM's training slice: its resolved ``train`` spec and its encoder and decoder
    sources (the speech splits are file inputs)."""
    spec = resolve_train(section(config)["models"][sllm]["train"])
    return {"train": spec, "encoder": encoder_source(config, spec["encoder"]),
            "decoder": decoder_source(config, spec["decoder"])}  # fmt: skip


def train_inputs(config: dict, results: str = RESULTS, *, sllm: str) -> dict[str, str]:
    """The training and validation speech, and the encoder and decoder: a decoder this config
    pretrains is its rule's output folder; a local encoder or decoder gives its weight and
    config files as :class:`~workflow_scripts.core.sources.Source` inputs (files, not the
    folder, so a backbones' pretraining rule writing to ``pretrained_dir`` never claims
    them). A hub id is no file input."""
    dec = section(config)["models"][sllm]["train"]["decoder"]
    out = {"train": paths.path("speechllm_speech", results, split="training"),
           "validation": paths.path("speechllm_speech", results, split="validation")}  # fmt: skip
    enc = section(config)["models"][sllm]["train"]["encoder"]
    if enc not in (config.get("models") or {}) or "pretrain" not in config["models"][enc]:
        if files := local_model(encoder_source(config, enc)):
            out["encoder"] = files
    src = decoder_source(config, dec)
    if dec in pretrained_decoders(config):
        out["decoder"] = src
    elif files := local_model(src):
        out["decoder"] = files
    return out


def features_slice(config: dict, sllm: str, split: str) -> dict:
    return {"split": split, "model": model_source(config, sllm)}


def model_inputs(config: dict, sllm: str) -> dict:
    """A SpeechLLM as file inputs: its training output (a folder a rule makes), or a local
    folder and the encoder and decoder its ``config.json`` names, as
    :class:`~workflow_scripts.core.sources.Source` inputs (new weights of any of them rerun
    its cells)."""
    src = model_source(config, sllm)
    if sllm in trained_speechllms(config) or not Path(src).is_dir():
        return {"model": src}  # a rule's output, or missing here: Snakemake names it
    out = {"model": Source(src)}
    cfg_file = Path(src) / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    for part in ("encoder", "decoder"):
        if isinstance(cfg.get(part), str) and (files := local_model(str(Path(src) / cfg[part]))):
            out[f"{part}_files"] = [Source(os.path.normpath(f)) for f in files]
    return out


def features_inputs(config: dict, results: str = RESULTS, *, sllm: str, split: str) -> dict:
    return {
        **model_inputs(config, sllm),
        "speech": paths.path("speechllm_speech", results, split=split),
    }


# ----------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------
def similarity_cells(config: dict) -> list[dict[str, str]]:
    return [{"sllm": m, "task": t, "input": i}
            for m in speechllms(config) for t in tasks(config) for i in inputs(config)]  # fmt: skip


def pruning_cells(config: dict) -> list[dict[str, str]]:
    return [
        {"sllm": m, "task": t, "strategy": s}
        for m in speechllms(config)
        for t in tasks(config)
        for s in strategies(config)
    ]


def cells(config: dict) -> list[dict[str, str]]:
    """The wildcards of every cell: the similarity cells (with ``input``), then the pruning
    cells (with ``strategy``)."""
    return similarity_cells(config) + pruning_cells(config)


def cell_path(results: str = RESULTS, **w) -> str:
    name = "speechllm_similarity_cell" if "input" in w else "speechllm_pruning_cell"
    return paths.path(name, results, **w)


def cell_paths(config: dict, results: str = RESULTS) -> list[str]:
    return [cell_path(results, **w) for w in cells(config)]


def heal_settings(config: dict) -> dict | None:
    """Healing settings (defaults < ``speechllm.pruning.heal``), None when no n is listed."""
    heal = {**HEAL_DEFAULTS, **((section(config).get("pruning") or {}).get("heal") or {})}
    if not heal["n"]:
        return None
    heal["n"] = sorted(int(n) for n in heal["n"])
    if heal["joint_removal_task"] is None and tasks(config):
        heal["joint_removal_task"] = tasks(config)[0]
    return heal


def healed_strategies(config: dict) -> list[str]:
    """The strategies whose removal sets are healed: ``heal.strategies`` (null = every
    strategy), in the order of ``strategies``; [] when healing is off."""
    heal = heal_settings(config)
    if not heal:
        return []
    chosen = heal["strategies"]
    return [s for s in strategies(config) if chosen is None or s in chosen]


def _pruning_heal(config: dict, strategy: str) -> dict | None:
    """A pruning cell's healing settings: the budget and ``n`` (per-task healing), None for a
    strategy that is not healed (the joint switch and the list of healed strategies are not
    in it, so turning joint healing on, or healing another strategy, reruns no other cell)."""
    heal = heal_settings(config)
    if not heal or strategy not in healed_strategies(config):
        return None
    drop = ("joint", "joint_removal_task", "strategies")
    return {k: v for k, v in heal.items() if k not in drop}


def heal_cells(config: dict) -> list[dict[str, str]]:
    """The healing cells' wildcards: the n = 0 control per SpeechLLM whenever healing is on,
    and joint healing per SpeechLLM x strategy when ``heal.joint`` is set."""
    heal = heal_settings(config)
    if not heal:
        return []
    names = [HEAL_CONTROL]
    if heal["joint"]:
        names += [f"{HEAL_JOINT}-{s}" for s in healed_strategies(config)]
    return [{"sllm": m, "healing": h} for m in speechllms(config) for h in names]


def heal_slice(config: dict, *, healing: str, sllm: str | None = None) -> dict:
    """A healing cell's slice (the same for every SpeechLLM). The control: the budget only
    (:data:`HEAL_BUDGET`: listing another n reruns no control), the tasks, the joint switch and
    the decoding settings; a joint cell: also ``n``, the strategy and ``removal_task``."""
    s, heal = section(config), heal_settings(config)
    out = {"healing": healing, "tasks": tasks(config), "joint": bool(heal["joint"]),
           "heal": {k: heal[k] for k in HEAL_BUDGET}, "batch_size": s["batch_size"],
           "max_new_tokens": s["max_new_tokens"],
           "test_utterances": s["pruning"]["test_utterances"]}  # fmt: skip
    if healing != HEAL_CONTROL:
        out["heal"]["n"] = heal["n"]
        out["strategy"] = healing.removeprefix(f"{HEAL_JOINT}-")
        out["removal_task"] = heal["joint_removal_task"]
    return out


def heal_inputs(config: dict, results: str = RESULTS, *, sllm: str, healing: str) -> dict:
    """The SpeechLLM, the test and training features and speech, and for a joint cell the
    pruning cell whose removal sets it heals (``joint_removal_task``'s, the same strategy)."""
    out = model_inputs(config, sllm)
    out.update(_features(results, sllm, "testing"))
    out.update(_features(results, sllm, "training"))
    if healing != HEAL_CONTROL:
        task = heal_settings(config)["joint_removal_task"]
        strategy = healing.removeprefix(f"{HEAL_JOINT}-")
        out["pruning"] = cell_path(results, sllm=sllm, task=task, strategy=strategy)
    return out


def heal_path(results: str = RESULTS, **w) -> str:
    return paths.path("speechllm_heal_cell", results, **w)


def heal_records_path(results: str = RESULTS, **w) -> str:
    return paths.path("speechllm_heal_records", results, **w)


def cell_slice(config: dict, *, task: str, sllm: str | None = None, input: str | None = None,
               strategy: str | None = None) -> dict:  # fmt: skip
    """A cell's slice (the same for every SpeechLLM: the model is an input). Similarity: task,
    input type, reduction, utterances, batch size. Pruning: task, the strategy's settings, the
    decoding settings, the calibration settings only for scored strategies, healing only when
    on (the threshold is the tables'; editing it reruns no cell)."""
    s = section(config)
    if input is not None:
        sim = s["similarity"]
        out = {"task": task, "input": input, "reduce": sim["reduce"],
               "utterances": sim["utterances"], "batch_size": s["batch_size"]}  # fmt: skip
        if input == "text":  # also the decoder without its adapter (condition base)
            out["base_decoder"] = bool(sim.get("base_decoder"))
        return out
    p = s["pruning"]
    own = registry.resolve_settings(strategy, p["strategies"][strategy])
    own.pop("heal", None)
    keep_first = own.pop("keep_first", None)
    cell = {"task": task, "strategy": strategy, "settings": own, "keep_first": keep_first,
            "batch_size": s["batch_size"], "max_new_tokens": s["max_new_tokens"],
            "test_utterances": p["test_utterances"],
            "heal": _pruning_heal(config, strategy)}  # fmt: skip
    if strategy in SCORED:
        cell.update(
            calibration_input=p["calibration_input"],
            calibration_utterances=p["calibration_utterances"],
        )
    return cell


def _features(results: str, sllm: str, split: str) -> dict[str, str]:
    return {
        f"{split}_features": paths.path("speechllm_features", results, sllm=sllm, split=split),
        f"{split}_speech": paths.path("speechllm_speech", results, split=split),
    }


def cell_inputs(
    config: dict,
    results: str = RESULTS,
    *,
    sllm: str,
    task: str,
    input: str | None = None,
    strategy: str | None = None,
) -> dict[str, str]:
    """The SpeechLLM folder (when local) and the features + speech of the splits the cell
    reads: validation (similarity, calibration), testing (pruning), training (healing)."""
    out = model_inputs(config, sllm)
    if input is not None:
        return {**out, **_features(results, sllm, "validation")}
    out.update(_features(results, sllm, "testing"))
    if strategy in SCORED:
        out.update(_features(results, sllm, "validation"))
    if strategy in healed_strategies(config):
        out.update(_features(results, sllm, "training"))
    return out


def wildcard_constraints(config: dict, trained: bool = False) -> dict[str, str]:
    """Each wildcard: one of its configured values (``sllm``: only the SpeechLLMs with a
    ``train`` spec when ``trained``, for the training rule)."""

    def alt(values, none):
        return "|".join(map(re.escape, values)) or none

    sllms = trained_speechllms(config) if trained else speechllms(config)
    return {
        "sllm": alt(sllms, "NO_SPEECHLLM"),
        "decoder": alt(pretrained_decoders(config), "NO_DECODER"),
        "task": alt(tasks(config), "NO_TASK"),
        "input": alt(inputs(config), "NO_INPUT"),
        "strategy": alt(strategies(config), "NO_STRATEGY"),
        "split": "|".join(SPLITS),
        "healing": alt(sorted({c["healing"] for c in heal_cells(config)}), "NO_HEALING"),
    }


def resource(config: dict, key: str, scale: int = 1):
    """A model job's request from ``speechllm.resources`` as a Snakemake resource function:
    ``gpu`` as configured, ``mem_mb`` and ``runtime`` times ``scale`` and the attempt (retries
    ask for more)."""

    def value(wildcards, attempt):
        v = section(config)["resources"][key]
        return v if key == "gpu" else v * scale * attempt

    return value


def tables_slice(config: dict) -> dict:
    """The tables' slice: the ΔWER threshold, the bootstrap's settings and the overlap
    table's n."""
    p = section(config)["pruning"]
    return {"threshold": p["threshold"], "bootstrap": p["bootstrap"],
            "overlap_n": section(config)["overlap_n"]}  # fmt: skip


def records_path(results: str = RESULTS, **w) -> str:
    """The per-utterance records beside a pruning cell."""
    return paths.path("speechllm_pruning_records", results, **w)


def tables_inputs(config: dict, results: str = RESULTS) -> dict[str, list[str]]:
    return {"similarity": [cell_path(results, **w) for w in similarity_cells(config)],
            "pruning": [cell_path(results, **w) for w in pruning_cells(config)],
            "records": [records_path(results, **w) for w in pruning_cells(config)],
            "heal": [heal_path(results, **w) for w in heal_cells(config)],
            "heal_records": [heal_records_path(results, **w)
                             for w in heal_cells(config)]}  # fmt: skip


def targets(config: dict, results: str = RESULTS) -> list[str]:
    """The family ``speechllm``: every cell and the tables and charts."""
    records = [records_path(results, **w) for w in pruning_cells(config)]
    healing = [f(results, **w) for w in heal_cells(config) for f in (heal_path, heal_records_path)]
    return (cell_paths(config, results) + records + healing
            + list(paths.tables("speechllm", results).values()))  # fmt: skip


def config_problems(config: dict) -> list[str]:
    """Cross-field checks, each naming its key: strategies (decoder ones only, registry
    settings), names unique across the pretrained folders, decoders referenced by a ``train``
    spec, utterance counts the cells and healing need."""
    from workflow_scripts.speechllm.checks import text_and_task_problems

    s = section(config)
    if not s:
        return []
    where = "config.speechllm"
    chosen = (s.get("pruning") or {}).get("strategies") or {}
    problems = registry.config_problems(chosen)
    problems = [p.replace("config.pruning.", f"{where}.pruning.") for p in problems]
    problems += text_and_task_problems(config)
    bad = [k for k in chosen if k in registry.STRATEGIES and k not in STRATEGIES]
    if bad:
        problems.append(f"{where}.pruning.strategies: {bad} are not decoder strategies; "
                        f"allowed: {list(STRATEGIES)}")  # fmt: skip
    reduce = (chosen.get("angular_block") or {}).get("reduce", "last")
    if reduce not in REDUCE:
        problems.append(f"{where}.pruning.strategies.angular_block.reduce: {reduce!r} is not "
                        f"one of {list(REDUCE)}")  # fmt: skip
    names = [*(config.get("models") or {}), *(s.get("decoders") or {}), *(s.get("models") or {})]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"{where}: names {dup} are used twice across config.models, "
                        f"{where}.decoders and {where}.models")  # fmt: skip
    utt = (s.get("speech") or {}).get("utterances") or {}
    heal = heal_settings(config)
    if (heal or trained_speechllms(config)) and not utt.get("training"):
        problems.append(
            f"{where}.speech.utterances.training: 0, but healing or training needs "
            "training utterances"
        )
    unknown = sorted(set((heal or {}).get("strategies") or []) - set(strategies(config)))
    if unknown:
        problems.append(f"{where}.pruning.heal.strategies: {unknown} are not in "
                        f"{where}.pruning.strategies {strategies(config)}")  # fmt: skip
    if heal and heal["joint"] and len(tasks(config)) < 2:
        problems.append(f"{where}.pruning.heal.joint: joint healing needs two or more "
                        f"{where}.tasks, not {tasks(config)}")  # fmt: skip
    if heal and heal["joint"] and heal["joint_removal_task"] not in tasks(config):
        problems.append(f"{where}.pruning.heal.joint_removal_task: "
                        f"{heal['joint_removal_task']!r} is not one of {where}.tasks "
                        f"{tasks(config)}")  # fmt: skip
    from workflow_scripts.speechllm.checks import corpus_problems

    return problems + corpus_problems(config)
