"""Readers for two real speech corpora, LibriSpeech (ASR) and CoVoST 2 (speech translation), into
manifest frames of the SpeechLLM stage (issue #28, "a path to real data"), and the stage's speech
split folders made from them (:func:`write_corpus_split`, the ``speechllm_speech`` job with
``speechllm.speech.source: corpora``; docs/speechllm.md, "Real corpora").

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

import numpy as np
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
    base = _librispeech_base(root, subset)
    skips = _Skips()
    df, summary = _frame(_librispeech_rows(root, base, skips), LIBRISPEECH_COLUMNS, skips, base)
    return df, summary


def _librispeech_base(root: Path, subset: str) -> Path:
    """``<root>/<subset>``, or :class:`FileNotFoundError` naming what is missing."""
    _require(root, "LibriSpeech root")
    base = root / subset
    if not base.is_dir():
        have = sorted(e.name for e in _dirs(root))
        raise FileNotFoundError(
            f"LibriSpeech subset {subset!r} not found: {base} (folders in {root}: {have})"
        )
    return base


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
    table = _covost_table(root, tsv)
    skips = _Skips()
    with open(table, encoding="utf-8", newline="") as f:
        df, summary = _frame(_covost_rows(root, f, table, skips), COVOST_COLUMNS, skips, table)
    return df, summary


def _covost_table(root: Path, tsv: str | os.PathLike) -> Path:
    """The TSV of a CoVoST split (its clips folder checked), or :class:`FileNotFoundError`
    naming what is missing."""
    _require(root, "CoVoST root")
    table = Path(tsv) if Path(tsv).is_absolute() else root / tsv
    if not table.is_file():
        have = sorted(p.name for p in root.glob("*.tsv"))
        raise FileNotFoundError(f"CoVoST TSV not found: {table} (TSV files in {root}: {have})")
    _require(root / "clips", "CoVoST clips folder")
    return table


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


# ------------------------------------------------------------------ split folders of the stage
#: Why a row the reader gave did not become an utterance of the split folder: its audio cannot
#: be decoded (``unreadable_audio``: a corrupt or truncated file) or holds no samples.
AUDIO_REASONS = ("unreadable_audio", "empty_audio")
#: Manifest columns of a split folder made from the corpora (``speech.MANIFEST``): ``path`` (the
#: 16-kHz wav in the folder), ``text`` (the English transcript), ``translation`` (CoVoST: the
#: TSV's translation; LibriSpeech: empty), ``reference`` (what the row's ``task`` is scored
#: on: the transcript for ``asr``, the translation for ``st``/``st_es``), ``task``, ``split``,
#: ``duration`` (s), ``utterance_id``, ``sentence_id``, ``speaker``, ``corpus`` (its name in
#: the config), ``source`` (the audio file, relative to the corpus root).
SPLIT_COLUMNS = ["path", "text", "translation", "reference", "task", "split", "duration",
                 "utterance_id", "sentence_id", "speaker", "corpus", "source"]  # fmt: skip


def reference(row: dict, task: str, reader: str) -> str:
    """What an utterance of ``reader`` is scored on for ``task``: the transcript (``asr``) or
    the translation (a translation task; CoVoST only)."""
    if task == "asr":
        return row["text"]
    if reader != "covost":
        raise ValueError(f"{reader} has no translations: it cannot serve task {task!r}")
    return row["translation"]


def part_rows(part: dict, skips: _Skips) -> Iterator[dict]:
    """The rows of one corpus part (``{"reader", "root", "subset" | "tsv"}``), read lazily in
    the reader's order; skipped lines go to ``skips``. A missing root, subset, TSV or clips
    folder raises :class:`FileNotFoundError` naming it (before the first row)."""
    root, reader = Path(part["root"]), part["reader"]
    if reader == "librispeech":
        base = _librispeech_base(root, part["subset"])
        return _librispeech_rows(root, base, skips)
    if reader == "covost":
        return _covost_stream(root, _covost_table(root, part["tsv"]), skips)
    raise ValueError(f"unknown corpus reader {reader!r}; readers: librispeech, covost")


def _covost_stream(root: Path, table: Path, skips: _Skips) -> Iterator[dict]:
    with open(table, encoding="utf-8", newline="") as f:
        yield from _covost_rows(root, f, table, skips)


class NoDecoder(RuntimeError):
    """This machine cannot decode a format at all (not one bad file): stops the job."""


class AudioLoader:
    """Decode an audio file (any format this libsndfile reads: WAV, FLAC, and MP3 from
    libsndfile 1.1 on) to a 16-kHz mono float32 waveform: channels averaged, resampled with
    :func:`workflow_scripts.data.augment.make_resampler` (one resampler per source rate)."""

    def __init__(self) -> None:
        import soundfile as sf

        self.sf = sf
        self.mp3 = "MP3" in sf.available_formats()
        self.resamplers: dict = {}

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        from workflow_scripts.data.augment import SAMPLE_RATE, make_resampler

        if Path(path).suffix.lower() == ".mp3" and not self.mp3:
            raise NoDecoder(
                f"cannot decode {path}: this libsndfile ({self.sf.__libsndfile_version__}) "
                "reads no MP3 (it does from 1.1.0 on); update soundfile / libsndfile, or "
                "convert the clips to WAV or FLAC under the same names"
            )
        data, rate = self.sf.read(str(path), dtype="float32", always_2d=True)
        mono = data.mean(axis=1, dtype=np.float32)
        if rate not in self.resamplers:
            self.resamplers[rate] = make_resampler(int(rate), SAMPLE_RATE)
        return self.resamplers[rate](mono)


def write_corpus_split(folder: str | os.PathLike, split: str, parts: dict[str, dict], n: int,
                       log=None) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Write the split folder ``split`` of the SpeechLLM stage from real corpora: for each task
    of ``parts`` (task -> ``{"corpus", "reader", "root", "subset" | "tsv"}``; in that order),
    the first ``n`` usable utterances of its corpus part in the reader's order, decoded,
    averaged to mono and resampled to 16 kHz (``<i>.wav``, 16-bit PCM, numbered across tasks),
    and the manifest (:data:`SPLIT_COLUMNS`). Streamed: one utterance's audio in memory at a
    time, the corpus read only as far as the ``n`` utterances need (a TSV of 300,000 lines
    is not read to its end for 1,000).

    A reader's skipped line (:data:`REASONS`) and audio that cannot be decoded or is empty
    (:data:`AUDIO_REASONS`) are counted and skipped, never fatal; a part that gives no
    utterance at all is an error. Returns ``(manifest, summary)``: per task its corpus, the
    TSV or subset folder, ``rows``, ``exhausted`` (the part had fewer than ``n``), the seconds
    of speech and the skips by reason with the first paths of each (only lines read before
    the ``n``-th utterance are counted)."""
    import soundfile as sf

    from workflow_scripts.data.augment import SAMPLE_RATE
    from workflow_scripts.speechllm.speech import MANIFEST

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    load = AudioLoader()
    rows: list[dict] = []
    summary: dict[str, dict] = {}
    for task, part in parts.items():
        skips = _Skips()
        skips.counts.update(dict.fromkeys(AUDIO_REASONS, 0))
        skips.examples.update({r: [] for r in AUDIO_REASONS})
        done, seconds, exhausted = 0, 0.0, True
        where = Path(part["root"]) / (part.get("subset") or part.get("tsv") or "")
        stream = part_rows(part, skips) if n > 0 else iter(())
        for row in stream:
            if done >= n:
                exhausted = False
                break
            src = Path(part["root"]) / row["path"]
            try:
                audio = load(src)
            except NoDecoder:
                raise
            except (sf.SoundFileError, RuntimeError, ValueError, OSError, EOFError) as err:
                skips.add("unreadable_audio", f"{src} ({type(err).__name__}: {err})")
                continue
            if audio.size == 0:
                skips.add("empty_audio", str(src))
                continue
            rel = f"{len(rows):05d}.wav"
            sf.write(folder / rel, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16",
                     format="WAV")  # fmt: skip
            duration = round(audio.size / SAMPLE_RATE, 4)
            rows.append({"path": rel, "text": row["text"],
                         "translation": row.get("translation", ""),
                         "reference": reference(row, task, part["reader"]), "task": task,
                         "split": split, "duration": duration,
                         "utterance_id": row["utterance_id"], "sentence_id": row["sentence_id"],
                         "speaker": row["speaker"], "corpus": part["corpus"],
                         "source": row["path"]})  # fmt: skip
            done += 1
            seconds += duration
            if log is not None and (done % 500 == 0 or done == n):
                log(f"{split} / {task}: {done}/{n} utterances from {where}")
        skipped = {r: k for r, k in skips.counts.items() if k}
        if n > 0 and done == 0:
            raise ValueError(f"no usable utterance in {where} for {split} / {task}; "
                             f"skipped: {skipped or 'nothing'}")  # fmt: skip
        summary[task] = {"corpus": part["corpus"], "reader": part["reader"], "source": str(where),
                         "rows": done, "wanted": n, "exhausted": exhausted and done < n,
                         "seconds": round(seconds, 2), "skipped": dict(skips.counts),
                         "skipped_total": sum(skips.counts.values()),
                         "examples": {r: v for r, v in skips.examples.items() if v}}  # fmt: skip
        if log is not None:
            log(f"{split} / {task}: {done} utterances ({seconds:.0f} s) from {where}"
                + (f"; only {done} of {n}: the part has no more" if done < n else "")
                + f"; skipped: {skipped or 'none'}"
                + "".join(f"\n  {r}: {', '.join(v)}" for r, v in skips.examples.items()
                          if v))  # fmt: skip
    df = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    df.to_parquet(folder / MANIFEST, index=False)
    return df, summary
