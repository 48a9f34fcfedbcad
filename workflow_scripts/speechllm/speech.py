"""Spoken command sentences: espeak-ng speech of the command language in the keyword corpus's
speaker-identity-disjoint splits.

Utterance ``i`` of a split is spoken by a session of that split (the corpus's sessions,
:func:`workflow_scripts.data.sessions.make_sessions`, so no voice+variant identity is heard in
two splits), says a sentence of that split (:meth:`~workflow_scripts.speechllm.text.Sentences.
sentence`: held-out sentences for validation, the test sentences in their seeded order for
testing; :func:`utterance_draws`) and, with ``augment`` on, gets the corpus's
per-clip augmentations: rate and pitch jitter, speed perturbation, reverberation with the
corpus's probability and noise from the corpus's noise banks at the session's SNR plus jitter.
Its draws come from a generator seeded by ``(seed, split, i)``; espeak-ng's flutter phase carries
from call to call, so a split is a pure function of its slice when made in a fresh process, and
the first k utterances do not depend on how many are made.

Layout: ``<folder>/manifest.parquet`` (one row per utterance: ``path``, ``text``,
``translation``, ``session``, ``identity``, ``split``, ``duration`` and the draws) and
``<folder>/<i>.wav`` (16 kHz mono 16-bit PCM).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.data import augment as A
from workflow_scripts.data.augment import SAMPLE_RATE
from workflow_scripts.speechllm.text import SPLITS, Sentences, translate

MANIFEST = "manifest.parquet"
EDGE_SILENCE_S = (0.05, 0.3)  # silence before and after the speech, uniform in this range


def _trim(speech: np.ndarray) -> np.ndarray:
    """Leading and trailing near-silence (below 2% of the peak) removed."""
    env = np.abs(speech)
    if not speech.size or env.max() <= 0:
        return speech
    idx = np.flatnonzero(env > 0.02 * env.max())
    return speech[idx[0] : idx[-1] + 1]


class UtteranceRenderer:
    """Renders sentences in a session's voice with the corpus's augmentations (see the module
    docstring); ``augment=False`` keeps only the session's voice, rate, pitch and loudness."""

    def __init__(self, corpus_cfg: dict, sessions, augment: bool) -> None:
        from workflow_scripts.data.corpus import check_voices, noise_banks
        from workflow_scripts.data.espeak import engine as get_engine

        self.cfg, self.augment = corpus_cfg, augment
        self.engine = get_engine()
        check_voices(self.engine, list(corpus_cfg["voices"]), list(corpus_cfg["variants"]))
        self.resample = A.make_resampler(self.engine.sample_rate)
        self.speed = A.SpeedPerturber()
        self.banks = (
            noise_banks(self.engine, self.resample, sessions, corpus_cfg) if augment else {}
        )
        self.noise_types = [t for t in A.NOISE_TYPES if t in self.banks]

    def __call__(self, sentence: str, s, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """(16-kHz float32 waveform, the utterance's draws)."""
        p, rv = self.cfg["perturb"], self.cfg["reverb"]
        jitter = self.augment
        rate = int(np.clip(s.rate + (rng.integers(-p["rate"], p["rate"] + 1) if jitter else 0),
                           80, 450))  # fmt: skip
        pitch = int(np.clip(s.pitch + (rng.integers(-p["pitch"], p["pitch"] + 1) if jitter else 0),
                            0, 100))  # fmt: skip
        seed = int(rng.integers(0, 2**31))
        raw = self.engine.synth(sentence, s.identity, rate, pitch, s.pitch_range, noise_seed=seed)
        speech = _trim(self.resample(raw))
        speed = float(A.speed_fraction(rng.uniform(*p["speed"]))) if jitter else 1.0
        speech = self.speed(speech, speed)
        peak = float(np.abs(speech).max()) if speech.size else 0.0
        if peak > 0:
            speech = speech / peak * 0.9 * 10 ** (s.gain_db / 20)
        pre, post = (int(rng.uniform(*EDGE_SILENCE_S) * SAMPLE_RATE) for _ in range(2))
        clip = np.concatenate([np.zeros(pre, np.float32), speech.astype(np.float32),
                               np.zeros(post, np.float32)])  # fmt: skip
        draws = {"rate": rate, "pitch": pitch, "speed": speed, "rt60": float("nan"),
                 "noise": "", "snr_db": float("nan")}  # fmt: skip
        if jitter and rng.random() < rv["prob"]:
            draws["rt60"] = float(rng.uniform(*rv["rt60"]))
            clip = A.reverberate(clip, draws["rt60"], float(rng.uniform(*rv["drr_db"])), rng)
        if self.noise_types:
            draws["noise"] = self.noise_types[int(rng.integers(len(self.noise_types)))]
            draws["snr_db"] = s.snr_db + float(rng.uniform(-p["snr_db"], p["snr_db"]))
            clip = A.add_noise(clip, self.banks[draws["noise"]], draws["snr_db"], rng)
        return np.clip(clip, -1.0, 1.0).astype(np.float32), draws


def speech_sessions(corpus_cfg: dict, sessions: int | None = None):
    """The recording sessions the speech is spoken in: the corpus's
    (:func:`~workflow_scripts.data.sessions.make_sessions`), or ``sessions`` of them instead of
    ``corpus.speakers`` when given: the same identity-disjoint split of the same identities (it
    depends only on the identity pool), the corpus's sessions first, then more sessions of each
    split's identities."""
    from workflow_scripts.data.sessions import make_sessions

    return make_sessions({**corpus_cfg, "speakers": sessions or corpus_cfg["speakers"]})


def utterance_draws(split: str, n: int, split_sessions: list, sentences: Sentences,
                    seed: int) -> Iterator[tuple[np.random.Generator, object, str]]:  # fmt: skip
    """Per utterance ``i < n`` of ``split``: its generator (seeded by ``(seed, split, i)``;
    the audio's draws continue from it), its session of ``split_sessions`` and its sentence.
    What :func:`synthesize_split` speaks and :func:`split_sentences` replays."""
    for i in range(n):
        rng = np.random.default_rng([seed, 41, SPLITS.index(split), i])
        s = split_sessions[int(rng.integers(len(split_sessions)))]
        yield rng, s, sentences.sentence(split, i, rng)


def split_sentences(split: str, n: int, corpus_cfg: dict, text_cfg: dict, seed: int,
                    sessions: int | None = None) -> list[str]:  # fmt: skip
    """The sentences the first ``n`` utterances of ``split`` say (:func:`synthesize_split`'s,
    without making audio)."""
    mine = [s for s in speech_sessions(corpus_cfg, sessions) if s.split == split]
    return [t for _, _, t in utterance_draws(split, n, mine, Sentences(text_cfg), seed)]


def synthesize_split(
    folder: str | os.PathLike,
    split: str,
    n: int,
    corpus_cfg: dict,
    text_cfg: dict,
    seed: int,
    augment: bool = True,
    sessions: int | None = None,
    log=None,
) -> pd.DataFrame:
    """Write ``n`` utterances of ``split`` into ``folder`` (see the module docstring), spoken in
    :func:`speech_sessions`, and return the manifest. Torch runs on one thread meanwhile
    (machine-independent resampling)."""
    import soundfile as sf
    import torch

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    all_sessions = speech_sessions(corpus_cfg, sessions)
    mine = [s for s in all_sessions if s.split == split]
    sentences = Sentences(text_cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        render = UtteranceRenderer(corpus_cfg, all_sessions, augment)
        for i, (rng, s, text) in enumerate(utterance_draws(split, n, mine, sentences, seed)):
            audio, draws = render(text, s, rng)
            rel = f"{i:05d}.wav"
            sf.write(folder / rel, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            rows.append({"path": rel, "text": text, "translation": translate(text),
                         "session": s.session, "identity": s.identity, "split": split,
                         "duration": round(audio.size / SAMPLE_RATE, 4), **draws})  # fmt: skip
            if log is not None and (i % 500 == 0 or i == n - 1):
                log(f"{split}: {i + 1}/{n} utterances")
    finally:
        torch.set_num_threads(threads)
    df = pd.DataFrame(rows)
    df.to_parquet(folder / MANIFEST, index=False)
    return df


def read_manifest(folder: str | os.PathLike, limit: int | None = None) -> pd.DataFrame:
    """The manifest of a split folder (its first ``limit`` utterances; None = all)."""
    df = pd.read_parquet(Path(folder) / MANIFEST)
    return df if limit is None else df.head(int(limit)).reset_index(drop=True)


def read_audio(folder: str | os.PathLike, rows: pd.DataFrame) -> list[np.ndarray]:
    """The float32 waveforms of manifest ``rows`` (a few; a split streams through
    :func:`iter_audio`)."""
    return list(iter_audio(folder, rows))


def iter_audio(folder: str | os.PathLike, rows: pd.DataFrame) -> Iterator[np.ndarray]:
    """The float32 waveforms of manifest ``rows``, read one at a time."""
    import soundfile as sf

    for p in rows.path:
        yield sf.read(str(Path(folder) / p), dtype="float32")[0]
