"""Readers for two real speech corpora, LibriSpeech (ASR) and CoVoST 2 (speech translation), into
manifest frames of the SpeechLLM stage (issue #28, "a path to real data"). Not yet wired into
``rules/speechllm.smk``: the stage still runs on its espeak-ng command sentences.

Both readers return ``(frame, summary)``. The frame has one row per usable utterance with the
columns ``utterance_id``, ``speaker``, ``path`` (relative to the corpus root, POSIX), ``text``
(as in the corpus), ``sentence_id`` (:func:`workflow_scripts.speechllm.text.sentence_id`: the
first 12 hex digits of the SHA-256 of the normalised text, so "HELLO, world" and "hello world"
share it, and the ids equal those ``speechllm.run`` computes for a manifest without them), plus
``chapter`` (LibriSpeech) or ``translation`` (CoVoST). No audio is opened or decoded: folders and
lines are read one at a time in sorted / file order, and only existence is checked.

A line or file that cannot become a row is skipped and counted, never fatal; the summary says
how many, by reason (:data:`REASONS`), with the first few paths of each (``examples``). A
missing corpus root, subset, TSV or clips folder raises :class:`FileNotFoundError` naming it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from workflow_scripts.speechllm.text import sentence_id

REASONS = ("missing_audio", "no_transcript", "malformed_line", "empty_text", "duplicate")
"""Why a line or audio file was skipped: ``missing_audio`` (a transcript line whose audio file is
absent), ``no_transcript`` (LibriSpeech: an audio file no ``trans.txt`` line names, or a
chapter without ``trans.txt``), ``malformed_line`` (no text, an id outside its chapter, a TSV
row with the wrong number of fields), ``empty_text`` (a blank transcript), ``duplicate`` (an
utterance id seen before)."""

LIBRISPEECH_COLUMNS = ["utterance_id", "speaker", "chapter", "path", "text", "sentence_id"]
COVOST_COLUMNS = ["utterance_id", "speaker", "path", "text", "translation", "sentence_id"]
COVOST_REQUIRED = ("path", "sentence", "translation", "client_id")
EXAMPLES = 5  # paths kept per skip reason in the summary


class _Skips:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(REASONS, 0)
        self.examples: dict[str, list[str]] = {r: [] for r in REASONS}

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < EXAMPLES:
            self.examples[reason].append(where)


def _summary(df: pd.DataFrame, skips: _Skips, source: Path) -> dict:
    return {
        "source": str(source),
        "rows": len(df),
        "skipped": dict(skips.counts),
        "skipped_total": sum(skips.counts.values()),
        "speakers": int(df.speaker.nunique()),
        "sentences": int(df.sentence_id.nunique()),
        "examples": {r: list(v) for r, v in skips.examples.items() if v},
    }


def _frame(rows: Iterable[dict], columns: list[str], skips: _Skips, source: Path):
    df = pd.DataFrame(list(rows), columns=columns)
    if df.empty:
        raise ValueError(
            f"no usable utterances in {source}; skipped: "
            f"{ {r: n for r, n in skips.counts.items() if n} or 'nothing (empty)' }"
        )
    return df, _summary(df, skips, source)


def _dirs(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if e.is_dir()), key=lambda e: e.name)


def _require(path: Path, what: str, hint: str = "") -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}{hint}")


# ---------------------------------------------------------------------------------- LibriSpeech


def read_librispeech(root: str | os.PathLike, subset: str) -> tuple[pd.DataFrame, dict]:
    """The utterances of LibriSpeech ``subset`` (e.g. ``train-clean-100``, ``test-clean``) under
    ``root``: ``<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``, with one
    ``<speaker>-<chapter>.trans.txt`` per chapter folder whose lines are
    ``<speaker>-<chapter>-<utt> TRANSCRIPT``. Speakers and chapters are visited in sorted folder
    order, a chapter's utterances in its ``trans.txt`` order. Returns ``(frame, summary)``
    (see the module docstring); ``speaker`` and ``chapter`` are the folder names (strings)."""
    root = Path(root)
    _require(root, "LibriSpeech root")
    base = root / subset
    if not base.is_dir():
        have = sorted(e.name for e in _dirs(root))
        raise FileNotFoundError(
            f"LibriSpeech subset {subset!r} not found: {base} (folders in {root}: {have})"
        )
    skips = _Skips()
    df, summary = _frame(_librispeech_rows(root, base, skips), LIBRISPEECH_COLUMNS, skips, base)
    return df, summary


def _librispeech_rows(root: Path, base: Path, skips: _Skips) -> Iterator[dict]:
    seen: set[str] = set()
    for spk in _dirs(base):
        for chap in _dirs(Path(spk.path)):
            folder = Path(chap.path)
            prefix = f"{spk.name}-{chap.name}"
            with os.scandir(folder) as it:
                audio = {e.name[: -len(".flac")] for e in it if e.name.endswith(".flac")}
            trans = folder / f"{prefix}.trans.txt"
            named: set[str] = set()
            if trans.is_file():
                with open(trans, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        where = f"{trans}:{number}"
                        line = line.rstrip("\r\n")
                        if not line.strip():
                            continue
                        utt, _, text = line.partition(" ")
                        if not utt.startswith(prefix + "-"):
                            skips.add("malformed_line", where)
                            continue
                        named.add(utt)
                        if not text.strip():
                            skips.add("empty_text", where)
                        elif utt in seen:
                            skips.add("duplicate", where)
                        elif utt not in audio:
                            skips.add("missing_audio", str(folder / f"{utt}.flac"))
                        else:
                            seen.add(utt)
                            yield {
                                "utterance_id": utt,
                                "speaker": spk.name,
                                "chapter": chap.name,
                                "path": (folder / f"{utt}.flac").relative_to(root).as_posix(),
                                "text": text,
                                "sentence_id": sentence_id(text),
                            }
            for utt in sorted(audio - named):
                skips.add("no_transcript", str(folder / f"{utt}.flac"))


# ------------------------------------------------------------------------------------- CoVoST 2


def read_covost(root: str | os.PathLike, tsv: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """The utterances of a CoVoST-2-style split: ``tsv`` names a tab-separated file with a header
    (a name in ``root``, e.g. ``covost_v2.en_de.train.tsv``, or a path), with at least the columns
    ``path``, ``sentence``, ``translation``, ``client_id``; the audio is
    ``<root>/clips/<path>``. Read with ``csv.QUOTE_NONE`` (CoVoST sentences contain quotes,
    which stay as written) line by line, every field a string (an ``NA`` sentence stays
    ``"NA"``). ``utterance_id`` is the clip's stem, ``speaker`` the ``client_id``, ``path``
    ``clips/<path>``, ``text`` the sentence. Clips the TSV does not name are not counted (one
    Common Voice clips folder serves every split). Returns ``(frame, summary)``."""
    root = Path(root)
    _require(root, "CoVoST root")
    table = Path(tsv) if Path(tsv).is_absolute() else root / tsv
    if not table.is_file():
        have = sorted(p.name for p in root.glob("*.tsv"))
        raise FileNotFoundError(f"CoVoST TSV not found: {table} (TSV files in {root}: {have})")
    clips = root / "clips"
    _require(clips, "CoVoST clips folder")
    skips = _Skips()
    with open(table, encoding="utf-8", newline="") as f:
        df, summary = _frame(_covost_rows(root, f, table, skips), COVOST_COLUMNS, skips, table)
    return df, summary


def _covost_rows(root: Path, f, table: Path, skips: _Skips) -> Iterator[dict]:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    missing = [c for c in COVOST_REQUIRED if c not in (header or [])]
    if missing:
        raise ValueError(f"{table}: header {header} lacks the columns {missing}")
    col = {name: i for i, name in enumerate(header)}
    seen: set[str] = set()
    for row in reader:
        where = f"{table}:{reader.line_num}"
        if row == [] or row == [""]:
            continue
        if len(row) != len(header):
            skips.add("malformed_line", where)
            continue
        clip, text = row[col["path"]], row[col["sentence"]]
        utt = Path(clip).stem
        if not clip or not utt:
            skips.add("malformed_line", where)
        elif not text.strip():
            skips.add("empty_text", where)
        elif utt in seen:
            skips.add("duplicate", where)
        elif not (root / "clips" / clip).is_file():
            skips.add("missing_audio", str(root / "clips" / clip))
        else:
            seen.add(utt)
            yield {
                "utterance_id": utt,
                "speaker": row[col["client_id"]],
                "path": f"clips/{clip}",
                "text": text,
                "translation": row[col["translation"]],
                "sentence_id": sentence_id(text),
            }
