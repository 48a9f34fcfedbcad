"""The SpeechLLM speech splits from real corpora (issue #28, "no path to real data"):
``speechllm.speech.source: corpora`` writes the split folders from a LibriSpeech tree (ASR) and a
CoVoST-2 TSV + clips (ST) - decoded, mono, 16 kHz, with references and sentence ids, a cap per
task and split, corrupt audio counted and skipped - checked in the config, planned with the
corpus files as sources, checked by preflight, and run through Snakemake up to the features of
a shipped SpeechLLM, with the roots coming from a site file.

The trees are written in the corpora's exact layouts with ``soundfile``: LibriSpeech FLAC at
16 kHz, CoVoST clips as 48-kHz stereo WAV (and MP3 where libsndfile writes it, as the real
release's Common Voice clips are)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import ROOT, default_config, planned_jobs, project_copy, run_smk

from workflow_scripts import grid, preflight
from workflow_scripts.core.config import ConfigError
from workflow_scripts.speechllm import corpus_plan, disk_plan, plan
from workflow_scripts.speechllm.corpora import SPLIT_COLUMNS, AudioLoader, write_corpus_split
from workflow_scripts.speechllm.speech import MANIFEST, read_audio, read_manifest
from workflow_scripts.speechllm.text import sentence_id

sf = pytest.importorskip("soundfile")
pytestmark = pytest.mark.skipif(
    "FLAC" not in sf.available_formats(), reason="libsndfile here cannot write FLAC"
)
MP3 = "MP3" in sf.available_formats()

# LibriSpeech: subset -> (speaker, chapter) -> transcripts; "CORRUPT ..." gets a corrupt FLAC,
# "NO AUDIO ..." none
LIBRISPEECH = {
    "train-clean-100": {("19", "198"): ["NORTHANGER ABBEY", "CHAPTER ONE", "NO ONE WHO HAD"]},
    "dev-clean": {("1272", "128104"): ["MISTER QUILTER IS THE APOSTLE", "NOR IS MISTER QUILTER'S",
                                       "HE TELLS US THAT"],
                  ("84", "121123"): ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]},
    "test-clean": {("1089", "134686"): ["HE HOPED THERE WOULD BE STEW",
                                        "CORRUPT AUDIO HERE", "STUFF IT INTO YOU",
                                        "NO AUDIO FOR THIS LINE", "AFTER EARLY NIGHTFALL"]},
}  # fmt: skip
# CoVoST 2: split -> (clip, sentence, translation); clip "bad" is corrupt, "gone" is absent
COVOST = {
    "train": [("c1", "Hello, world.", "Hallo, Welt."), ("c2", "Good morning.", "Guten Morgen.")],
    "dev": [("c3", 'He said "yes".', 'Er sagte "ja".'), ("c4", "Thank you.", "Danke."),
            ("c5", "See you soon.", "Bis bald."), ("c6", "Where is it?", "Wo ist es?")],
    "test": [("bad", "Broken clip.", "Kaputt."), ("gone", "Missing clip.", "Fehlt."),
             ("c7", "Turn left.", "Links abbiegen."), ("c8", "The end.", "Das Ende.")],
}  # fmt: skip
TSV = "covost_v2.en_de.{}.tsv"


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write_librispeech(root):
    """``<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` (16 kHz) and
    ``<speaker>-<chapter>.trans.txt``: the LibriSpeech layout."""
    for subset, chapters in LIBRISPEECH.items():
        for (spk, chap), lines in chapters.items():
            folder = root / subset / spk / chap
            folder.mkdir(parents=True)
            ids = [f"{spk}-{chap}-{i:04d}" for i in range(len(lines))]
            (folder / f"{spk}-{chap}.trans.txt").write_text(
                "".join(f"{u} {t}\n" for u, t in zip(ids, lines, strict=True))
            )
            for i, (u, t) in enumerate(zip(ids, lines, strict=True)):
                if t.startswith("CORRUPT"):
                    (folder / f"{u}.flac").write_bytes(b"fLaC" + b"\x00" * 64)
                elif not t.startswith("NO AUDIO"):
                    sf.write(str(folder / f"{u}.flac"), tone(0.5 + 0.1 * i, 16000), 16000,
                             format="FLAC")  # fmt: skip


def write_covost(root, mp3: bool = MP3):
    """``<root>/covost_v2.en_de.<split>.tsv`` (path, sentence, translation, client_id, the
    release's header) and ``<root>/clips/<clip>``: 48-kHz stereo WAV, c1 as MP3 where this
    libsndfile writes it, "bad" a corrupt file, "gone" absent."""
    (root / "clips").mkdir(parents=True)
    for split, rows in COVOST.items():
        lines = ["client_id\tpath\tsentence\ttranslation\tsplit"]
        for clip, text, translation in rows:
            name = f"common_voice_en_{clip}." + ("mp3" if clip == "c1" and mp3 else "wav")
            lines.append(f"spk_{clip}\t{name}\t{text}\t{translation}\t{split}")
            if clip == "bad":
                (root / "clips" / name).write_bytes(b"RIFF\x00\x00garbage")
            elif clip != "gone":
                fmt = "MP3" if name.endswith(".mp3") else "WAV"
                sf.write(str(root / "clips" / name), tone(1.0, 48000, 2), 48000, format=fmt)
        (root / TSV.format(split)).write_text("\n".join(lines) + "\n")


def corpora_section(ls_root, cv_root) -> dict:
    return {
        "source": "corpora",
        "corpora": {"librispeech": {"reader": "librispeech", "root": str(ls_root)},
                    "covost": {"reader": "covost", "root": str(cv_root)}},
        "splits": {"asr": {"training": {"corpus": "librispeech", "subset": "train-clean-100"},
                           "validation": {"corpus": "librispeech", "subset": "dev-clean"},
                           "testing": {"corpus": "librispeech", "subset": "test-clean"}},
                   "st": {"training": {"corpus": "covost", "tsv": TSV.format("train")},
                          "validation": {"corpus": "covost", "tsv": TSV.format("dev")},
                          "testing": {"corpus": "covost", "tsv": TSV.format("test")}}},
        "utterances": {"training": 2, "validation": 4, "testing": 3},
    }  # fmt: skip


@pytest.fixture
def trees(tmp_path):
    ls, cv = tmp_path / "LibriSpeech", tmp_path / "covost"
    write_librispeech(ls)
    write_covost(cv)
    return ls, cv


def _part(reader, root, **part):
    return {"corpus": reader, "reader": reader, "root": str(root), **part}


# ----------------------------------------------------------------------------------------
# The split folder
# ----------------------------------------------------------------------------------------
def test_split_from_both_corpora_references_ids_audio_and_skips(trees, tmp_path):
    ls, cv = trees
    parts = {"asr": _part("librispeech", ls, subset="test-clean"),
             "st": _part("covost", cv, tsv=TSV.format("test"))}  # fmt: skip
    out = tmp_path / "testing"
    df, summary = write_corpus_split(out, "testing", parts, 3)
    assert list(df.columns) == SPLIT_COLUMNS
    assert df.equals(read_manifest(out))
    asr, st = df[df.task == "asr"], df[df.task == "st"]
    # ASR: the first 3 usable lines in order; the corrupt FLAC and the line without audio skipped
    assert list(asr.utterance_id) == ["1089-134686-0000", "1089-134686-0002", "1089-134686-0004"]
    assert list(asr.reference) == list(asr.text) == [
        "HE HOPED THERE WOULD BE STEW", "STUFF IT INTO YOU", "AFTER EARLY NIGHTFALL"]  # fmt: skip
    assert (asr.translation == "").all() and (asr.corpus == "librispeech").all()
    assert asr.source.iloc[0] == "test-clean/1089/134686/1089-134686-0000.flac"
    # ST: the reference is the translation; the corrupt and the missing clip skipped; only 2 left
    assert list(st.utterance_id) == ["common_voice_en_c7", "common_voice_en_c8"]
    assert list(st.reference) == list(st.translation) == ["Links abbiegen.", "Das Ende."]
    assert list(st.text) == ["Turn left.", "The end."]
    assert list(df.sentence_id) == [sentence_id(t) for t in df.text]
    assert list(df.path) == [f"{i:05d}.wav" for i in range(5)]  # numbered across tasks
    assert (df.split == "testing").all() and list(st.speaker) == ["spk_c7", "spk_c8"]
    # 16 kHz mono 16-bit wav; 48-kHz stereo clips resampled (1 s -> 16,000 samples)
    for p, dur in zip(df.path, df.duration, strict=True):
        info = sf.info(str(out / p))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == round(dur * 16000)
    assert list(st.duration) == [1.0, 1.0] and asr.duration.iloc[0] == 0.5
    wav = read_audio(out, st.head(1))[0]
    assert wav.dtype == np.float32 and 0.2 < np.abs(wav).max() < 0.35
    # skips counted by reason, with the path
    a, s = summary["asr"], summary["st"]
    assert a["rows"] == 3 and not a["exhausted"]
    assert a["skipped"]["unreadable_audio"] == 1 and a["skipped"]["missing_audio"] == 1
    assert "1089-134686-0001.flac" in a["examples"]["unreadable_audio"][0]
    assert s["rows"] == 2 and s["exhausted"] and s["skipped_total"] == 2
    assert s["skipped"]["unreadable_audio"] == 1 and s["skipped"]["missing_audio"] == 1
    assert "common_voice_en_bad.wav" in s["examples"]["unreadable_audio"][0]


def test_the_cap_stops_reading_and_counts_only_lines_read(trees, tmp_path):
    ls, _ = trees
    part = {"asr": _part("librispeech", ls, subset="test-clean")}
    df, summary = write_corpus_split(tmp_path / "one", "testing", part, 1)
    assert list(df.utterance_id) == ["1089-134686-0000"]
    assert summary["asr"]["skipped_total"] == 0 and not summary["asr"]["exhausted"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["00000.wav", MANIFEST]
    empty, summary = write_corpus_split(tmp_path / "none", "training", part, 0)
    assert empty.empty and list(empty.columns) == SPLIT_COLUMNS and summary["asr"]["rows"] == 0


@pytest.mark.skipif(not MP3, reason="libsndfile here cannot write MP3")
def test_mp3_clips_are_decoded_and_a_missing_decoder_is_one_clear_error(trees, tmp_path):
    _, cv = trees
    part = {"st": _part("covost", cv, tsv=TSV.format("train"))}
    df, _ = write_corpus_split(tmp_path / "train", "training", part, 2)
    assert df.source.iloc[0] == "clips/common_voice_en_c1.mp3" and df.duration.iloc[0] > 0.9
    no_mp3 = AudioLoader()
    no_mp3.mp3 = False
    with pytest.raises(RuntimeError, match=r"common_voice_en_c1\.mp3.*reads no MP3"):
        no_mp3(cv / "clips" / "common_voice_en_c1.mp3")


def test_a_part_without_usable_audio_or_a_missing_path_is_an_error(trees, tmp_path):
    ls, cv = trees
    with pytest.raises(FileNotFoundError, match="test-other"):
        write_corpus_split(tmp_path / "a", "testing",
                           {"asr": _part("librispeech", ls, subset="test-other")}, 2)  # fmt: skip
    bad = tmp_path / "bad"
    write_covost(bad, mp3=False)
    header = "client_id\tpath\tsentence\ttranslation\n"
    (bad / TSV.format("x")).write_text(header + "s\tcommon_voice_en_bad.wav\tBroken.\tKaputt.\n")
    with pytest.raises(ValueError, match="no usable utterance.*unreadable_audio"):
        write_corpus_split(tmp_path / "b", "testing",
                           {"st": _part("covost", bad, tsv=TSV.format("x"))}, 2)  # fmt: skip


# ----------------------------------------------------------------------------------------
# Config, plan, site file, preflight
# ----------------------------------------------------------------------------------------
def _config(speech: dict, **speechllm) -> dict:
    cfg = default_config()
    cfg["outputs"] = ["speechllm"]
    cfg["speechllm"]["speech"] = {**cfg["speechllm"]["speech"], **speech}
    cfg["speechllm"].update(speechllm)
    return cfg


def test_config_checks_name_the_key(trees):
    ls, cv = trees
    speech = corpora_section(ls, cv)
    cfg = grid.validate(_config(speech))
    assert corpus_plan.corpus_tasks(cfg) == ["asr", "st"]
    assert corpus_plan.corpus_slice(cfg, "validation") == {
        "split": "validation", "utterances": 4,
        "parts": {"asr": _part("librispeech", ls, subset="dev-clean"),
                  "st": _part("covost", cv, tsv=TSV.format("dev"))}}  # fmt: skip
    bad = json.loads(json.dumps(speech))
    del bad["splits"]["st"]["testing"]
    bad["splits"]["asr"]["validation"] = {"corpus": "nope", "subset": "dev-clean"}
    bad["splits"]["asr"]["training"] = {"corpus": "librispeech", "tsv": "x.tsv"}
    bad["splits"]["st"]["training"] = {"corpus": "librispeech", "subset": "train-clean-100"}
    with pytest.raises(ConfigError) as err:
        grid.validate(_config(bad))
    text = str(err.value)
    assert "speech.splits.st.testing: missing" in text
    assert "speech.splits.asr.validation.corpus: 'nope' is not one of" in text
    assert "speech.splits.asr.training: the librispeech corpus 'librispeech' needs `subset`" in text
    assert "speech.splits.asr.training: ['tsv'] are no keys of a librispeech part" in text
    assert "speech.splits.st.training: st needs translations; librispeech has none" in text
    with pytest.raises(ConfigError, match=r"speech\.corpora\.x\.reader"):
        grid.validate(_config({**speech, "corpora": {"x": {"reader": "mls", "root": "/d"}}}))
    # the synthetic source ignores the corpora; its slice is unchanged by them
    syn = grid.validate(_config({**bad, "source": "synthetic"}))
    assert "parts" not in plan.speech_slice(syn, "testing") and not corpus_plan.speech_inputs(
        syn, split="testing"
    )


def test_plan_sources_disk_and_the_site_file(trees):
    ls, cv = trees
    cfg = grid.validate(_config(corpora_section(ls, cv)))
    inputs = corpus_plan.speech_inputs(cfg, split="testing")
    assert inputs == {"asr_corpus": [str(ls / "test-clean/1089/134686/1089-134686.trans.txt")],
                      "st_corpus": [str(cv / TSV.format("test"))]}  # fmt: skip
    assert all(type(p).__name__ == "Source" for v in inputs.values() for p in v)
    synthetic = grid.validate(_config({}))
    assert disk_plan.speech_bytes(cfg, split="testing") > 3 * 2 * 16_000 * 6
    assert disk_plan.speech_bytes(synthetic, split="testing") == 200 * 80_444 + 100_000  # unchanged
    # the site file sets the roots of the grid's corpora only (a corpus it also lists that
    # the grid lacks is not added)
    shipped = corpora_section("<site>", "<site>")
    site = {"speechllm": {"speech": {"corpora": {"librispeech": {"root": str(ls)},
                                                 "covost": {"root": str(cv)},
                                                 "mls": {"root": "/elsewhere"}}}}}  # fmt: skip
    merged = grid.validate(grid.assemble(default_config(), site, _config(shipped)))
    assert merged["speechllm"]["speech"]["corpora"] == corpora_section(ls, cv)["corpora"]
    plain = grid.validate(grid.assemble(default_config(), site, {}))
    assert plain["speechllm"]["speech"]["corpora"] == {}


def test_preflight_names_the_key_of_an_unset_or_missing_root(trees):
    ls, cv = trees
    shipped = grid.validate(_config(corpora_section("<site>", cv)))
    checks = preflight.check_speechllm_corpora(shipped)
    assert [ok for ok, _ in checks] == [False, True]
    assert "config.speechllm.speech.corpora.librispeech.root is '<site>'" in checks[0][1]
    assert "config/site.yaml" in checks[0][1]
    assert "train-clean-100, dev-clean, test-clean" not in checks[1][1]
    assert TSV.format("dev") in checks[1][1]
    (ls / "dev-clean").rename(ls / "dev-other")
    gone = grid.validate(_config(corpora_section(ls, cv.parent / "nowhere")))
    (ok_ls, text_ls), (ok_cv, text_cv) = preflight.check_speechllm_corpora(gone)
    assert not ok_ls and "dev-clean" in text_ls and "corpora.librispeech.root" in text_ls
    assert not ok_cv and "corpora.covost.root" in text_cv and "nowhere" in text_cv
    assert preflight.check_speechllm_corpora(grid.validate(_config({}))) == []


def test_paper_config_reads_the_corpora_through_the_site_file():
    from workflow_scripts.resource_plan import load_config

    cfg = load_config(["config/speechllm-paper.yaml"])
    assert plan.speech_source(cfg) == "corpora"
    assert corpus_plan.corpus_tasks(cfg) == cfg["speechllm"]["tasks"]
    parts = corpus_plan.corpus_slice(cfg, "testing")["parts"]
    assert parts["asr"]["subset"] == "test-clean" and parts["st"]["tsv"].endswith("test.tsv")
    example = yaml.safe_load((ROOT / "config/site.example.yaml").read_text())
    named = example["config"]["speechllm"]["speech"]["corpora"]
    assert set(named) == set(cfg["speechllm"]["speech"]["corpora"])


# ----------------------------------------------------------------------------------------
# Through Snakemake: the split folders and a shipped SpeechLLM's features
# ----------------------------------------------------------------------------------------
def test_workflow_writes_the_splits_from_the_site_roots_and_encodes_them(trees, tmp_path):
    from workflow_scripts.speechllm.features import Features

    ls, cv = trees
    cfg = _config(corpora_section("<site>", "<site>"),
                  models={"speechllm-hubert": {"hf": "models/speechllm-hubert"}})  # fmt: skip
    d = project_copy(tmp_path / "proj", cfg)
    roots = {"librispeech": {"root": str(ls)}, "covost": {"root": str(cv)}}
    site = {"config": {"speechllm": {"speech": {"corpora": roots}}}}
    (d / "config/site.yaml").write_text(yaml.safe_dump(site))
    res = d / "results"
    splits = [f"results/speechllm/speech/{s}" for s in ("training", "validation", "testing")]
    features = "results/speechllm/features/speechllm-hubert/testing.safetensors"
    run_smk(d, "--profile", "profiles/local", "--cores", "2", *splits, features, timeout=300)
    test = read_manifest(res / "speechllm/speech/testing")
    assert list(test.task) == ["asr"] * 3 + ["st"] * 2
    assert list(test.reference) == ["HE HOPED THERE WOULD BE STEW", "STUFF IT INTO YOU",
                                    "AFTER EARLY NIGHTFALL", "Links abbiegen.",
                                    "Das Ende."]  # fmt: skip
    assert list(test.sentence_id) == [sentence_id(t) for t in test.text]
    val = read_manifest(res / "speechllm/speech/validation")
    assert list(val.utterance_id[:4]) == ["1272-128104-0000", "1272-128104-0001",
                                          "1272-128104-0002", "84-121123-0000"]  # fmt: skip
    assert list(val.reference[4:]) == ['Er sagte "ja".', "Danke.", "Bis bald.", "Wo ist es?"]
    assert len(read_manifest(res / "speechllm/speech/training")) == 4
    prov = json.loads((res / "speechllm/speech/testing/provenance.json").read_text())
    skipped = json.loads(prov["corpora"])
    assert skipped["asr"]["skipped"]["unreadable_audio"] == 1
    assert skipped["st"]["skipped"]["unreadable_audio"] == 1 and skipped["st"]["exhausted"]
    assert str(ls / "test-clean/1089/134686/1089-134686.trans.txt") in prov["input_paths"]
    assert json.loads(prov["code_unplanned"]) == []  # the plan's code digests cover the job
    log = (res / "logs/speechllm_speech/testing.log").read_text()
    assert "skipped: {'missing_audio': 1, 'unreadable_audio': 1}" in log
    assert "1089-134686-0001.flac" in log  # the first paths of each reason
    assert len(Features(res / features.removeprefix("results/"))) == len(test)
    # a changed transcript reruns its split (the corpus files are sources), and only that
    assert "Nothing to be done" in run_smk(d, "-n", "--profile", "profiles/local", *splits).stdout
    trans = ls / "test-clean/1089/134686/1089-134686.trans.txt"
    trans.write_text(trans.read_text().replace("STEW", "STEW AND"))
    assert planned_jobs(d, "--profile", "profiles/local", *splits) == {
        "speechllm_speech": ["split=testing"]
    }


# ----------------------------------------------------------------------------------------
# What the jobs after the features read: each task its own utterances and references
# ----------------------------------------------------------------------------------------
def test_cells_healing_and_training_read_each_tasks_own_utterances(trees, tmp_path):
    """A tiny random SpeechLLM on splits made from the corpora: each cell, healing cell and
    the training read only their task's utterances, scored on the corpus's references (the
    ASR transcript, the CoVoST translation), with the corpus's utterance and sentence ids."""
    import torch
    from test_speechllm import never_ending, tiny_speechllm

    from workflow_scripts.speechllm.healing import heal_cell
    from workflow_scripts.speechllm.model import save_speechllm
    from workflow_scripts.speechllm.run import (
        _split_data,
        pruning_cell,
        read_features,
        similarity_cell,
        write_features,
    )
    from workflow_scripts.speechllm.text import target_text
    from workflow_scripts.speechllm.train import train_job

    ls, cv = trees
    model, enc_src, dec_src = tiny_speechllm(tmp_path)
    save_speechllm(model, tmp_path / "sllm", enc_src, dec_src)
    never_ending(dec_src)
    cfg = grid.validate(_config(corpora_section(ls, cv)))
    data = {}
    for split in ("training", "validation", "testing"):
        s = corpus_plan.corpus_slice(cfg, split)
        write_corpus_split(tmp_path / split, split, s["parts"], s["utterances"])
        write_features(str(tmp_path / "sllm"), str(tmp_path / split), str(tmp_path / f"{split}.st"))
        data[split] = (str(tmp_path / f"{split}.st"), str(tmp_path / split))
    test = read_manifest(tmp_path / "testing")
    feats, texts = _split_data(*data["testing"], None, ["st"])
    assert len(feats) == 2 and [target_text(t, "st") for t in texts] == list(
        test.reference[test.task == "st"]
    )
    whole = read_features(data["testing"][0])  # every utterance, in manifest order
    assert all(torch.equal(a, whole[i]) for a, i in zip(feats, (3, 4), strict=True))
    assert torch.equal(_split_data(*data["testing"], 1, ["st"])[0][0], whole[3])
    with pytest.raises(ValueError, match="no reference for 'asr'"):
        target_text(texts[0], "asr")
    with pytest.raises(ValueError, match="name the task"):
        _split_data(*data["testing"])
    sllm = str(tmp_path / "sllm")
    sim = similarity_cell(plan.cell_slice(cfg, task="st", input="text"), sllm="m", task="st",
                          input_type="text", model_dir=sllm, features=data["validation"][0],
                          speech_dir=data["validation"][1])  # fmt: skip
    assert (sim.utterances == 4).all()
    heal = {"n": [1], "steps": 2, "batch_size": 2, "joint": True}
    cfg["speechllm"]["pruning"]["heal"] = heal
    cfg = grid.validate(cfg)
    for task, want in (("asr", test[test.task == "asr"]), ("st", test[test.task == "st"])):
        cell = {**plan.cell_slice(cfg, task=task, strategy="backward"), "max_new_tokens": 3}
        df, rec = pruning_cell(cell, sllm="m", task=task, strategy="backward", model_dir=sllm,
                               test=data["testing"], calibration=data["validation"],
                               train=data["training"])  # fmt: skip
        assert (df.test_utterances == len(want)).all() and df.healed.any()
        for _, state in rec.groupby(["n_removed", "healed"]):
            assert list(state.utterance_id) == list(want.utterance_id)
            assert list(state.reference) == list(want.reference)
            assert list(state.sentence_id) == list(want.sentence_id)
    cell = {**plan.heal_slice(cfg, healing="control"), "max_new_tokens": 3}
    df, rec = heal_cell(cell, sllm="m", healing="control", model_dir=sllm, test=data["testing"],
                        train=data["training"])  # fmt: skip
    assert set(zip(df.task, df.healing, df.test_utterances, df.heal_utterances, strict=True)) == {
        ("asr", "task", 3, 2), ("st", "task", 2, 2), ("asr", "joint", 3, 4),
        ("st", "joint", 2, 4)}  # fmt: skip
    assert set(rec[rec.task == "st"].reference) == {"Links abbiegen.", "Das Ende."}
    # training: the train spec's tasks, each its own utterances; validation scored per task
    spec = {"encoder": enc_src, "decoder": dec_src, "steps": 2, "batch_size": 2,
            "projector": {"stack": 2, "kind": "mlp", "hidden": 16}}  # fmt: skip
    out = train_job(spec, enc_src, dec_src, str(tmp_path / "training"),
                    str(tmp_path / "validation"), str(tmp_path / "trained"),
                    log=lambda _m: None, progress=False)  # fmt: skip
    summary = out["summary"]
    assert summary["train_utterances"] == 4 and summary["validation_utterances"] == 8
    assert "validation_st_wer" in summary and "validation_asr_wer" in summary
