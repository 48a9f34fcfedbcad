"""The LibriSpeech and CoVoST 2 readers (issue #28) on small trees in the corpora's layouts.

LibriSpeech audio is written as real FLAC with ``soundfile`` (skipped where libsndfile lacks
FLAC). CoVoST's clips are Common Voice mp3s, which ``soundfile`` may not write; the readers never
decode audio (they check that the file exists), so the clips here are empty placeholder files
named ``.mp3``."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.speechllm.corpora import (
    COVOST_COLUMNS,
    LIBRISPEECH_COLUMNS,
    REASONS,
    read_covost,
    read_librispeech,
)
from workflow_scripts.speechllm.text import sentence_id

sf = pytest.importorskip("soundfile")
needs_flac = pytest.mark.skipif(
    "FLAC" not in sf.available_formats(), reason="libsndfile here cannot write FLAC"
)


def flac(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(160, dtype=np.float32), 16000, format="FLAC")


def librispeech(root, subset="dev-clean"):
    """Two speakers, three chapters; one transcript line without audio (1272-128104-0002), one
    audio file without a line (1272-128104-0009)."""
    chapters = {
        ("1272", "128104"): ["HELLO, WORLD", "IT'S A TEST", "NO AUDIO FOR THIS ONE"],
        ("1272", "135031"): ["HELLO WORLD"],
        ("84", "121123"): ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"],
    }
    for (spk, chap), lines in chapters.items():
        folder = root / subset / spk / chap
        folder.mkdir(parents=True)
        ids = [f"{spk}-{chap}-{i:04d}" for i in range(len(lines))]
        trans = "".join(f"{u} {t}\n" for u, t in zip(ids, lines, strict=True))
        (folder / f"{spk}-{chap}.trans.txt").write_text(trans)
        for u, t in zip(ids, lines, strict=True):
            if t != "NO AUDIO FOR THIS ONE":
                flac(folder / f"{u}.flac")
    flac(root / subset / "1272" / "128104" / "1272-128104-0009.flac")
    (root / subset / "README.TXT").write_text("not a speaker folder")


@needs_flac
def test_librispeech_rows_ids_paths_and_skips(tmp_path):
    librispeech(tmp_path)
    df, summary = read_librispeech(tmp_path, "dev-clean")
    assert list(df.columns) == LIBRISPEECH_COLUMNS
    # sorted folder order: speaker "1272" < "84" as strings; chapters sorted; lines in file order
    assert list(df.utterance_id) == [
        "1272-128104-0000",
        "1272-128104-0001",
        "1272-135031-0000",
        "84-121123-0000",
        "84-121123-0001",
    ]
    assert list(df.speaker) == ["1272", "1272", "1272", "84", "84"]
    assert list(df.chapter) == ["128104", "128104", "135031", "121123", "121123"]
    assert df.path[0] == "dev-clean/1272/128104/1272-128104-0000.flac"
    assert all((tmp_path / p).is_file() for p in df.path)
    assert list(df.text) == [
        "HELLO, WORLD",
        "IT'S A TEST",
        "HELLO WORLD",
        "GO DO YOU HEAR",
        "BUT IN LESS THAN FIVE MINUTES",
    ]
    assert list(df.sentence_id) == [sentence_id(t) for t in df.text]
    # the same sentence with other case / punctuation shares its id
    assert df.sentence_id[0] == df.sentence_id[2] == sentence_id("hello world")
    assert len(df.sentence_id[0]) == 12
    assert summary["rows"] == 5 and summary["speakers"] == 2 and summary["sentences"] == 4
    assert set(summary["skipped"]) == set(REASONS)
    assert summary["skipped"]["missing_audio"] == 1
    assert summary["skipped"]["no_transcript"] == 1
    assert summary["skipped_total"] == 2
    missing = str(tmp_path / "dev-clean/1272/128104/1272-128104-0002.flac")
    orphan = str(tmp_path / "dev-clean/1272/128104/1272-128104-0009.flac")
    assert summary["examples"] == {"missing_audio": [missing], "no_transcript": [orphan]}
    # deterministic: a second read is identical
    again, _ = read_librispeech(str(tmp_path), "dev-clean")
    pd.testing.assert_frame_equal(df, again)


@needs_flac
def test_librispeech_chapter_without_transcript_and_malformed_lines(tmp_path):
    librispeech(tmp_path)
    flac(tmp_path / "dev-clean/84/999/84-999-0000.flac")  # a chapter with no trans.txt
    trans = tmp_path / "dev-clean/84/121123/84-121123.trans.txt"
    trans.write_text(
        trans.read_text() + "\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
        "12-34-0000 WRONG CHAPTER\n84-121123-0003\n"
    )
    df, summary = read_librispeech(tmp_path, "dev-clean")
    assert len(df) == 5
    assert summary["skipped"] == {
        "missing_audio": 1,
        "no_transcript": 2,
        "malformed_line": 1,
        "empty_text": 1,
        "duplicate": 1,
    }
    assert summary["examples"]["malformed_line"] == [f"{trans}:5"]


def test_librispeech_errors_name_the_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        read_librispeech(tmp_path / "nowhere", "dev-clean")
    (tmp_path / "test-clean").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        read_librispeech(tmp_path, "dev-clean")
    assert str(tmp_path / "dev-clean") in str(err.value) and "test-clean" in str(err.value)
    (tmp_path / "test-clean" / "1" / "2").mkdir(parents=True)
    with pytest.raises(ValueError, match="no usable utterances"):
        read_librispeech(tmp_path, "test-clean")


TSV = "covost_v2.en_de.dev.tsv"


def covost(root, name=TSV):
    """Four rows: a sentence with quotes (and an unbalanced one), a duplicate sentence in other
    case, a row whose clip is absent; plus a clip no row names."""
    lines = [
        "path\tsentence\ttranslation\tclient_id",
        'common_voice_en_1.mp3\tHe said "hello, world".\tEr sagte „hallo, Welt".\tspk_a',
        "common_voice_en_2.mp3\the said hello world\ter sagte hallo welt\tspk_b",
        'common_voice_en_3.mp3\tThe 12" record\tDie 12"-Platte\tspk_a',
        "common_voice_en_4.mp3\tNo clip for me\tKein Clip\tspk_c",
    ]
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "clips").mkdir()
    for i in (1, 2, 3, 9):
        (root / "clips" / f"common_voice_en_{i}.mp3").write_bytes(b"")


def test_covost_rows_quotes_ids_and_skips(tmp_path):
    covost(tmp_path)
    df, summary = read_covost(tmp_path, TSV)
    assert list(df.columns) == COVOST_COLUMNS
    assert list(df.utterance_id) == [f"common_voice_en_{i}" for i in (1, 2, 3)]
    assert list(df.speaker) == ["spk_a", "spk_b", "spk_a"]
    assert list(df.path) == [f"clips/common_voice_en_{i}.mp3" for i in (1, 2, 3)]
    assert all((tmp_path / p).is_file() for p in df.path)
    # quotes inside sentences survive as written (csv.QUOTE_NONE)
    assert list(df.text) == ['He said "hello, world".', "he said hello world", 'The 12" record']
    assert list(df.translation) == [
        'Er sagte „hallo, Welt".',
        "er sagte hallo welt",
        'Die 12"-Platte',
    ]
    assert df.sentence_id[0] == df.sentence_id[1] == sentence_id("HE SAID HELLO WORLD")
    assert df.sentence_id[2] != df.sentence_id[0]
    assert summary["rows"] == 3 and summary["speakers"] == 2 and summary["sentences"] == 2
    assert summary["skipped"]["missing_audio"] == 1 and summary["skipped_total"] == 1
    assert summary["examples"] == {
        "missing_audio": [str(tmp_path / "clips" / "common_voice_en_4.mp3")]
    }
    # an absolute path to the TSV works too
    again, _ = read_covost(tmp_path, tmp_path / TSV)
    assert again.equals(df)


def test_covost_malformed_duplicate_and_na_rows(tmp_path):
    covost(tmp_path)
    with open(tmp_path / TSV, "a", encoding="utf-8") as f:
        f.write("common_voice_en_1.mp3\tagain\twieder\tspk_a\n")  # duplicate clip
        f.write("common_voice_en_9.mp3\tonly three\tfields\n")  # malformed
        f.write("common_voice_en_9.mp3\t \tleer\tspk_d\n")  # empty sentence
    (tmp_path / "clips" / "common_voice_en_5.mp3").write_bytes(b"")
    with open(tmp_path / TSV, "a", encoding="utf-8") as f:
        f.write("common_voice_en_5.mp3\tNA\tNA\tNA\n")  # "NA" is text, not missing
    df, summary = read_covost(tmp_path, TSV)
    assert list(df.utterance_id)[-1] == "common_voice_en_5"
    assert df.text.iloc[-1] == "NA" and df.speaker.iloc[-1] == "NA"
    assert summary["skipped"] == {
        "missing_audio": 1,
        "no_transcript": 0,
        "malformed_line": 1,
        "empty_text": 1,
        "duplicate": 1,
    }
    assert summary["examples"]["malformed_line"] == [f"{tmp_path / TSV}:7"]


def test_covost_errors_name_the_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        read_covost(tmp_path / "nowhere", TSV)
    (tmp_path / "covost_v2.en_de.train.tsv").write_text("path\tsentence\ttranslation\tclient_id\n")
    with pytest.raises(FileNotFoundError) as err:
        read_covost(tmp_path, TSV)
    assert str(tmp_path / TSV) in str(err.value)
    assert "covost_v2.en_de.train.tsv" in str(err.value)
    (tmp_path / TSV).write_text("path\tsentence\ttranslation\tclient_id\n")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "clips"))):
        read_covost(tmp_path, TSV)
    (tmp_path / "clips").mkdir()
    (tmp_path / TSV).write_text("path\tsentence\tclient_id\nx.mp3\thi\tspk\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['translation'\]"):
        read_covost(tmp_path, TSV)
