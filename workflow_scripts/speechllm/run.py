"""The SpeechLLM stage's jobs: the frozen encoder's features of a speech split, one decoder-
similarity cell and one decoder-pruning cell.

* Features ``speechllm/features/{sllm}/{split}.safetensors``: the encoder hidden state the
  SpeechLLM reads, of every utterance of the split, computed once (cells only run projector and
  decoder).
* Similarity cell ``cells/speechllm_similarity/{sllm}/{task}-{input}.parquet``: the angular
  distance d(h_l, h_l+n) of every (l, n) (``metric = angular``) and the block influence of every
  block (``metric = block_influence``, ``n = 1``) on the validation utterances
  (:mod:`~workflow_scripts.speechllm.similarity`).
* Pruning cell ``cells/speechllm_pruning/{sllm}/{task}-{strategy}.parquet``: one row per seed
  and n = 0 .. L-1 removed decoder blocks: the removed set, WER / BLEU / sentence error rate
  on the test utterances and, for the configured n, the same after LoRA healing
  (:mod:`~workflow_scripts.speechllm.heal`); beside it, ``...records.parquet``: one row per
  evaluated state (seed, n, healed or not) and test utterance with its utterance and sentence
  ids, reference, hypothesis and word errors, from which every WER and BLEU of the cell is
  recomputed (tests/test_speechllm_records.py) and the tables bootstrap over sentences.

Both cells carry the SpeechLLM's factors as its ``config.json`` names them (:func:`factors`):
``encoder``, ``decoder`` (names), ``language`` (of the speech; ``en`` unless the config says)
and ``condition``, the paper's Fig. 1 conditions: ``lora`` (a LoRA-adapted decoder, whatever
the input), ``frozen`` (speech through a SpeechLLM whose decoder was kept frozen: projector
only) and ``base`` (text through the decoder without any adapter: a frozen SpeechLLM's text
cells, and with ``base_decoder`` in a text cell's slice, a LoRA SpeechLLM's decoder with its
adapter left out; ``encoder`` is empty there, the encoder takes no part).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import pandas as pd

from workflow_scripts.speechllm.metrics import scores
from workflow_scripts.speechllm.settings import SCORED
from workflow_scripts.speechllm.speech import read_manifest

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------
def write_features(model_dir: str, speech_dir: str, out: str, log: Log = _quiet,
                   progress: bool = True) -> int:  # fmt: skip
    """Encode every utterance of ``speech_dir`` with the SpeechLLM's frozen encoder (its layer
    ``encoder_layer``) into the feature file ``out``
    (:mod:`~workflow_scripts.speechllm.features`: streamed, one utterance in memory at a time);
    returns the number of utterances."""
    from pathlib import Path

    from workflow_scripts.speechllm.features import encode_split
    from workflow_scripts.speechllm.model import load_encoder, read_config, resolve, weights_sha256

    cfg = read_config(model_dir)
    for k in ("encoder", "decoder"):  # the weights the SpeechLLM was trained on, unchanged?
        src, want = resolve(cfg[k], model_dir), cfg.get(f"{k}_weights_sha256")
        if want and Path(src).exists() and weights_sha256(src) != want:
            log(f"WARNING: the {k} {src} is not the one this SpeechLLM was trained with")
    enc = load_encoder(resolve(cfg["encoder"], model_dir))
    rows = read_manifest(speech_dir)
    t0 = time.time()
    n = encode_split(enc, speech_dir, rows, cfg["encoder_layer"], out,
                     {"encoder_layer": cfg["encoder_layer"]}, progress)  # fmt: skip
    log(f"{n} utterances encoded in {time.time() - t0:.1f} s")
    return n


def read_features(path: str, limit: int | None = None):
    """The per-utterance (frames, D) features of a feature file (its first ``limit``), read on
    demand (:class:`~workflow_scripts.speechllm.features.Features`)."""
    from workflow_scripts.speechllm.features import Features

    return Features(path, limit)


def _split_data(features: str, speech_dir: str, limit: int | None = None,
                tasks: list[str] | None = None):  # fmt: skip
    """(features, texts) of the utterances a job of ``tasks`` reads: the first ``limit``; of a
    split made from corpora, the first ``limit`` of each of ``tasks``, whose texts carry their
    references (:mod:`~workflow_scripts.speechllm.splits`)."""
    from workflow_scripts.speechllm import splits

    rows = read_manifest(speech_dir)
    if not splits.by_task(rows):
        feats = read_features(features, limit)
        return feats, list(rows.text[: len(feats)])
    pos = splits.positions(rows, tasks, limit)
    return splits.Rows(read_features(features), pos), splits.texts(rows, pos)


def utterance_ids(speech_dir: str, n: int, task: str | None = None) -> tuple[list[str], list[str]]:
    """(utterance ids, sentence ids) of the first ``n`` utterances of a speech folder (of a
    split made from corpora: of ``task``): the manifest's ``utterance_id`` / ``sentence_id``
    columns when it has them (a real corpus), else the audio file's stem and
    :func:`~workflow_scripts.speechllm.text.sentence_id` of the sentence."""
    from pathlib import Path

    from workflow_scripts.speechllm import splits
    from workflow_scripts.speechllm.text import sentence_id

    rows = read_manifest(speech_dir)
    rows = rows.iloc[splits.positions(rows, [task] if task else None, n)]
    utt = rows.utterance_id if "utterance_id" in rows else rows.path.map(lambda p: Path(p).stem)
    sent = rows.sentence_id if "sentence_id" in rows else rows.text.map(sentence_id)
    return [str(u) for u in utt], [str(s) for s in sent]


def _name(ref: str, folder: str) -> str:
    """A model reference of a SpeechLLM config as a name: a local folder's name, a hub id."""
    from pathlib import Path

    from workflow_scripts.speechllm.model import resolve

    p = Path(resolve(ref, folder))
    return p.resolve().name if p.exists() else str(ref)


def factors(model_dir: str) -> dict[str, str]:
    """What a SpeechLLM is built of, from its ``config.json``: ``encoder`` and ``decoder``
    (folder names or hub ids), ``language`` (of its speech; ``en`` unless set) and
    ``condition``: ``lora`` when it has a LoRA adapter, else ``frozen`` (the decoder was kept
    frozen, only the projector trained)."""
    from workflow_scripts.speechllm.model import read_config

    cfg = read_config(model_dir)
    return {"encoder": _name(cfg["encoder"], model_dir),
            "decoder": _name(cfg["decoder"], model_dir),
            "language": str(cfg.get("language") or "en"),
            "condition": "lora" if cfg.get("lora") else "frozen"}  # fmt: skip


# ----------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------
def similarity_cell(cell: dict, *, sllm: str, task: str, input_type: str, model_dir: str,
                    features: str, speech_dir: str, log: Log = _quiet) -> pd.DataFrame:  # fmt: skip
    """The similarity cell's table (see the module docstring) for the ``cell`` slice of
    :func:`~workflow_scripts.speechllm.plan.cell_slice`: the SpeechLLM's decoder, and for a
    text cell with ``base_decoder`` of a SpeechLLM with an adapter, also its decoder without
    the adapter (rows of condition ``base``)."""
    from workflow_scripts.speechllm.model import load_speechllm
    from workflow_scripts.speechllm.similarity import decoder_similarity, distance_rows

    own = factors(model_dir)
    adapted = own["condition"] == "lora"
    runs = [(own["condition"] if input_type == "speech" or adapted else "base", True)]
    if input_type == "text" and adapted and cell.get("base_decoder"):
        runs.append(("base", False))
    feats, texts = _split_data(features, speech_dir, cell["utterances"], [task])
    parts = []
    for condition, adapter in runs:
        model = load_speechllm(model_dir, with_encoder=False, adapter=adapter)
        t0 = time.time()
        sim = decoder_similarity(model, feats, texts, task, input_type, cell["reduce"],
                                 cell["batch_size"])  # fmt: skip
        L = sim["angular"].shape[0] - 1
        log(f"{sllm} / {task} / {input_type} / {condition}: {len(texts)} utterances, "
            f"{time.time() - t0:.1f} s")  # fmt: skip
        rows = [{"metric": "angular", **r, "value": r.pop("distance")}
                for r in distance_rows(sim["angular"])]  # fmt: skip
        rows += [{"metric": "block_influence", "layer": i, "n": 1, "value": float(v)}
                 for i, v in enumerate(sim["block_influence"])]  # fmt: skip
        df = pd.DataFrame(rows)
        for col, v in (("model", sllm), ("task", task), ("input", input_type)):
            df.insert(0 if col == "model" else df.columns.get_loc("metric"), col, v)
        df["n_layers"], df["utterances"], df["reduce"] = L, len(texts), cell["reduce"]
        for k, v in {**own, "condition": condition}.items():
            df[k] = v
        if condition == "base":
            df["encoder"] = ""  # text through the decoder alone: no encoder takes part
        parts.append(df)
    return pd.concat(parts, ignore_index=True)[
        ["model", "task", "input", "condition", "metric", "layer", "n", "value", "n_layers",
         "utterances", "reduce", "encoder", "decoder", "language"]]  # fmt: skip


def _score(model, feats, texts, task, cell) -> dict:
    from workflow_scripts.speechllm.train import evaluate

    refs, hyps = evaluate(model, feats, texts, task, cell["batch_size"], cell["max_new_tokens"])
    return {**scores(refs, hyps), "example": hyps[0] if hyps else "", "refs": refs, "hyps": hyps}


def _records(state: dict, res: dict, ids: tuple[list[str], list[str]]) -> list[dict]:
    """One record per test utterance of one evaluated state (see the module docstring)."""
    from workflow_scripts.speechllm.metrics import utterance_errors

    out = []
    for u, s, r, h in zip(*ids, res["refs"], res["hyps"], strict=True):
        errors, words = utterance_errors(r, h)
        out.append({**state, "utterance_id": u, "sentence_id": s, "reference": r,
                    "hypothesis": h, "errors": errors, "words": words})  # fmt: skip
    return out


def pruning_cell(
    cell: dict,
    *,
    sllm: str,
    task: str,
    strategy: str,
    model_dir: str,
    test: tuple[str, str],
    calibration: tuple[str, str],
    train: tuple[str, str] | None = None,
    log: Log = _quiet,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pruning cell's table and its per-utterance records (see the module docstring) for
    the ``cell`` slice of :func:`~workflow_scripts.speechllm.plan.cell_slice`; ``test``,
    ``calibration`` and ``train`` are (features file, speech folder) pairs of the test,
    validation and training splits (training only when healing is on)."""
    from workflow_scripts.speechllm.model import decoder_layers, load_speechllm
    from workflow_scripts.speechllm.pruning import decoder_params, removal_plans, removed_layers
    from workflow_scripts.speechllm.similarity import decoder_similarity

    model = load_speechllm(model_dir, with_encoder=False)
    L = len(decoder_layers(model.decoder))
    feats, texts = _split_data(*test, cell["test_utterances"], [task])
    ids = utterance_ids(test[1], len(texts), task)
    records: list[dict] = []
    sim = None
    if strategy in SCORED:
        cal = _split_data(*calibration, cell["calibration_utterances"], [task])
        reduce = cell["settings"].get("reduce", "last")
        sim = decoder_similarity(model, *cal, task, cell["calibration_input"], reduce,
                                 cell["batch_size"])  # fmt: skip
    settings = {**cell["settings"], "keep_first": cell["keep_first"]}
    plans = removal_plans(strategy, L, settings, sim)
    rows, base, t0 = [], None, time.time()
    for seed, sets in plans:
        for removed in sets:
            with removed_layers(model.decoder, removed):
                res = _score(model, feats, texts, task, cell)
                params = decoder_params(model.decoder)
            if base is None:
                base = res
            rows.append(_row(seed, removed, L, res, base, params))
            records += _records(_state(seed, removed, False), res, ids)
    log(f"{sllm} / {task} / {strategy}: {len(rows)} removal sets, {time.time() - t0:.1f} s")
    for r, res in _heal_rows(model, rows, task, (feats, texts), train, cell, log):
        records += _records(_state(r["seed"], r["removed"], True), res, ids)
    df, rec = pd.DataFrame(rows), pd.DataFrame(records)
    for d in (df, rec):
        for i, (col, v) in enumerate((("model", sllm), ("task", task), ("strategy", strategy))):
            d.insert(i, col, v)
        d["seed"] = d["seed"].astype("Int64")
    for k, v in factors(model_dir).items():
        df[k] = v
    df["test_utterances"] = len(texts)
    df["scores"] = json.dumps({k: v.round(6).tolist() for k, v in sim.items()}) if sim else None
    return df, rec


def _state(seed, removed, healed: bool) -> dict:
    return {"seed": seed, "n_removed": len(removed), "removed": list(map(int, removed)),
            "healed": healed}  # fmt: skip


def _row(seed, removed, L, res, base, params) -> dict:
    """One removal set's row (the relative degradation is the tables': it depends on the
    threshold settings, not on the cell)."""
    n = len(removed)
    return {
        "seed": seed, "n_removed": n, "n_layers": L, "fraction_removed": n / L,
        "removed": list(map(int, removed)), "wer": res["wer"], "bleu": res["bleu"],
        "ser": res["ser"], "base_wer": base["wer"], "base_bleu": base["bleu"],
        "decoder_params": params, "example": res["example"], "healed": False,
        "healed_wer": math.nan, "healed_bleu": math.nan, "healed_ser": math.nan,
        "heal_seconds": math.nan,
    }  # fmt: skip


def _heal_rows(model, rows: list[dict], task: str, test_data, train, cell: dict,
               log: Log) -> list[tuple[dict, dict]]:  # fmt: skip
    """Heal the set of every row whose n is listed in ``heal.n`` on the training utterances of
    ``train`` and fill its healed columns from the test utterances ``test_data``; returns the
    (row, scores) of each healed set."""
    from workflow_scripts.speechllm.heal import heal, healed_columns

    hc = cell.get("heal")
    todo = [r for r in rows if hc and 0 < r["n_removed"] and r["n_removed"] in hc["n"]]
    if not todo:
        return []
    if train is None:
        raise ValueError("healing is on but no training features were given")
    feats, texts = _split_data(*train, hc["train_utterances"], [task])
    done = []
    for r in todo:
        t0 = time.time()
        healed = heal(model, r["removed"], task, feats, texts, hc)
        res = _score(healed, *test_data, task, cell)
        r.update(healed_columns(res, healed, time.time() - t0, hc, len(texts)))
        log(f"healed {r['removed']}: WER {r['wer']:.4f} -> {res['wer']:.4f}")
        done.append((r, res))
    return done
