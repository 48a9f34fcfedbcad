"""Synthetic spoken-keyword corpus in the exact Speech Commands v0.02 layout.

A speaker *identity* is an espeak-ng English voice (accent) plus a voice variant (``+m3``,
``+f2``, ``+klatt``, ``+whisper``...). Each *session* of an identity (the ``<id>`` of the file
names, what Speech Commands calls the speaker) has its own speaking rate, pitch, pitch range,
loudness and SNR. Every clip of a session then jitters rate and pitch, is speed-perturbed, put
at a random position in the 1-s window, reverberated in a synthetic room (with probability
``reverb.prob``) and mixed with white, pink, brown or babble noise at a per-clip SNR
(:mod:`workflow_scripts.data.augment`).

Layout written (as in the real data set)::

    <root>/<word>/<session>_nohash_<n>.wav     16 kHz, mono, 16-bit PCM, 1 s
    <root>/_background_noise_/*.wav            the noise banks the clips were mixed with
    <root>/validation_list.txt                 relative paths of validation clips
    <root>/testing_list.txt                    relative paths of test clips
    <root>/speakers.tsv                        one row per session (identity, draws, split)
    <root>/clips.tsv                           one row per clip (its augmentation draws)

Splits are identity-disjoint: no voice+variant pair is heard in two splits
(:mod:`workflow_scripts.data.sessions`). The corpus is a pure function of its config when made
in a fresh process (espeak-ng's flutter phase carries from clip to clip within a process).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from workflow_scripts.data import augment as A
from workflow_scripts.data.augment import (  # noqa: F401 - CLIP_SAMPLES is read from here
    CLIP_SAMPLES,
    SAMPLE_RATE,
    place_in_window,
)
from workflow_scripts.data.sessions import SPLITS, Session, make_sessions, split_sizes

SPEECH_COMMANDS_WORDS: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
    "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
    "yes", "zero",
)  # fmt: skip

# Harvard sentences (IEEE 1969) without any of the 35 keywords: the babble talkers' text.
BABBLE_SENTENCES: tuple[str, ...] = (
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "The small pup gnawed a hole in the sock.",
    "The swan dive was far short of perfect.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
)
BABBLE_TALKERS = 6
NOISE_BANK_SECONDS = 10

# Variants refused because their audio differs between processes. espeak-ng seeds its breath-
# noise generator from the clock at start-up (unseeded, whisper's audio was equal in processes
# started within the same second, different across seconds); f2/f3/f5 made 770 of 10,500 clips
# differ between two fresh syntheses and were refused. espeak.Espeak.synth now seeds it per
# clip, and every variant file of the wheel's data (but `Mr serious`, whose name has a space)
# with each of the 8 English voices gave byte-identical audio in two processes started seconds
# apart, so none is refused; the check stays for a future espeak-ng data set.
NONDETERMINISTIC_VARIANTS: tuple[str, ...] = ()


def nondeterministic_variants_problem(variants: list[str]) -> str | None:
    """The complaint about ``variants`` that are in ``NONDETERMINISTIC_VARIANTS``, or None.
    Config validation reports it before any job runs; ``check_voices`` raises it."""
    noisy = [v for v in variants if v in NONDETERMINISTIC_VARIANTS]
    if not noisy:
        return None
    return (
        f"config.corpus.variants: {noisy} give different audio in every process, so the "
        "corpus would not be reproducible; remove them"
    )


RANGE_KEYS = ("rate", "pitch", "pitch_range", "snr_db", "reverb.rt60", "reverb.drr_db",
              "perturb.speed")  # fmt: skip


def config_problems(corpus: dict) -> list[str]:
    """Relations between ``corpus`` keys that the schema cannot express, each naming its key:
    ranges with min > max, split percentages leaving no training data, too few identities or
    sessions for the splits, and non-reproducible variants."""
    problems = []
    v, t = corpus.get("validation_percentage", 0), corpus.get("testing_percentage", 0)
    if v + t >= 100:
        problems.append(
            f"config.corpus: validation_percentage + testing_percentage = {v + t} leaves no "
            "training speakers (must be < 100)"
        )
    else:
        n_id = len(set(corpus.get("voices") or [])) * len(set(corpus.get("variants") or []))
        for what, n, key in (("identities", n_id, "voices x variants"),
                             ("sessions", corpus.get("speakers", 0), "speakers")):  # fmt: skip
            try:
                split_sizes(n, v, t)
            except ValueError:
                problems.append(
                    f"config.corpus.{key.split(' ')[0]}: {n} {what} ({key}) cannot give every "
                    f"split one (validation {v}%, testing {t}%)"
                )
    problem = nondeterministic_variants_problem(corpus.get("variants") or [])
    if problem:
        problems.append(problem)
    for key in RANGE_KEYS:
        section, _, leaf = key.rpartition(".")
        rng = (corpus.get(section) or {}).get(leaf) if section else corpus.get(key)
        if rng and rng[0] > rng[1]:
            problems.append(f"config.corpus.{key}: range {rng} has min > max")
    return problems


def check_voices(engine, voices: list[str], variants: list[str]) -> None:
    """Fail loudly on any voice or variant that espeak-ng rejects, and on the variants whose
    audio is not reproducible (``NONDETERMINISTIC_VARIANTS``)."""
    import espeakng_loader

    problem = nondeterministic_variants_problem(variants)
    if problem:
        raise ValueError(problem)

    variant_dir = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    bad = [v for v in voices if not engine.check_voice(v)]
    bad += [f"+{v}" for v in variants if v and not (variant_dir / v).is_file()]
    if bad:
        raise ValueError(
            f"espeak-ng rejects these corpus.voices / corpus.variants: {bad}. "
            "Accepted voice names look like 'en-us', 'en-gb-scotland' ('en-gb' is rejected); "
            f"variants are files in {variant_dir}."
        )


def _seed31(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31))


def _synth_16k(engine, resample, text: str, s: Session, rate: int, pitch: int, rng):
    """espeak-ng's waveform of ``text`` in session ``s``'s voice at 16 kHz, its noise seeded
    from ``rng``."""
    seed = _seed31(rng)
    raw = engine.synth(text, s.identity, rate, pitch, s.pitch_range, noise_seed=seed)
    return resample(raw)


def noise_banks(engine, resample, sessions: list[Session], cfg: dict) -> dict[str, np.ndarray]:
    """A ``NOISE_BANK_SECONDS`` unit-RMS bank of each of ``cfg['noise_types']``, seeded from
    ``cfg['seed']``. Babble is :data:`BABBLE_SENTENCES` spoken by ``BABBLE_TALKERS`` training
    sessions' identities, so a held-out identity is never heard in any clip of another split."""
    n = NOISE_BANK_SECONDS * SAMPLE_RATE
    banks = {}
    for k, kind in enumerate(A.NOISE_TYPES):
        if kind not in cfg["noise_types"]:
            continue
        rng = np.random.default_rng([cfg["seed"], 14, k])
        if kind != "babble":
            banks[kind] = A.colored_noise(kind, n, rng)
            continue
        train = [s for s in sessions if s.split == "training"]
        talkers = []
        for i in rng.permutation(len(train))[:BABBLE_TALKERS]:
            s, parts = train[i], []
            for j in rng.permutation(len(BABBLE_SENTENCES)):
                speech = _synth_16k(engine, resample, BABBLE_SENTENCES[j], s, s.rate, s.pitch, rng)
                parts += [speech, np.zeros(SAMPLE_RATE // 5, np.float32)]
            talkers.append(np.concatenate(parts).astype(np.float32))
        banks[kind] = A.mix_babble(talkers, n, rng)
    return banks


class ClipRenderer:
    """Renders one clip of a word for a session, with the per-clip augmentations of ``cfg``."""

    def __init__(self, engine, cfg: dict, banks: dict[str, np.ndarray], resample) -> None:
        self.engine, self.cfg, self.banks, self.resample = engine, cfg, banks, resample
        self.speed = A.SpeedPerturber()
        self.noise_types = [t for t in A.NOISE_TYPES if t in cfg["noise_types"]]

    def __call__(self, word: str, s: Session, rng: np.random.Generator):
        """(1-s 16-kHz float32 clip, the clip's draws as a dict)."""
        p, rv = self.cfg["perturb"], self.cfg["reverb"]
        rate = int(np.clip(s.rate + rng.integers(-p["rate"], p["rate"] + 1), 80, 450))
        pitch = int(np.clip(s.pitch + rng.integers(-p["pitch"], p["pitch"] + 1), 0, 100))
        speech = _synth_16k(self.engine, self.resample, word, s, rate, pitch, rng)
        speed = float(A.speed_fraction(rng.uniform(*p["speed"])))
        speech = self.speed(speech, speed)
        peak = float(np.abs(speech).max()) if speech.size else 0.0
        if peak > 0:
            speech = speech / peak * 0.9 * 10 ** (s.gain_db / 20)
        clip = place_in_window(speech, rng)
        rt60 = drr = float("nan")
        if rng.random() < rv["prob"]:
            rt60, drr = float(rng.uniform(*rv["rt60"])), float(rng.uniform(*rv["drr_db"]))
            clip = A.reverberate(clip, rt60, drr, rng)
        noise = self.noise_types[int(rng.integers(len(self.noise_types)))]
        snr = s.snr_db + float(rng.uniform(-p["snr_db"], p["snr_db"]))
        clip = A.add_noise(clip, self.banks[noise], snr, rng)
        draws = {"rate": rate, "pitch": pitch, "speed": speed, "rt60": round(rt60, 4),
                 "drr_db": round(drr, 3), "noise": noise, "snr_db": round(snr, 3)}  # fmt: skip
        return np.clip(clip, -1.0, 1.0).astype(np.float32), draws


def _write_wav_atomic(path: Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, audio, sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tsv(rows: list[dict]) -> str:
    head = "\t".join(rows[0])
    return head + "\n" + "".join("\t".join(str(v) for v in r.values()) + "\n" for r in rows)


def _write_tables(root: Path, sessions: list[Session], clips: list[dict], banks: dict) -> None:
    """The split lists, speakers.tsv, clips.tsv, the noise banks and a README."""
    for name, split in (("validation_list.txt", "validation"), ("testing_list.txt", "testing")):
        paths = sorted(c["path"] for c in clips if c["split"] == split)
        _write_text_atomic(root / name, "".join(f"{p}\n" for p in paths))
    _write_text_atomic(root / "speakers.tsv", _tsv([asdict(s) for s in sessions]))
    _write_text_atomic(root / "clips.tsv", _tsv(clips))
    noise_dir = root / "_background_noise_"
    noise_dir.mkdir(exist_ok=True)
    for kind, bank in banks.items():
        name = "babble.wav" if kind == "babble" else f"{kind}_noise.wav"
        _write_wav_atomic(noise_dir / name, (0.25 * bank / np.abs(bank).max()).astype(np.float32))
    (root / "README.md").write_text(
        "Synthetic Speech Commands v0.02 look-alike made with espeak-ng by this project's\n"
        "`synthesize_corpus` rule. Not real speech; the layout matches the original. Splits are\n"
        "disjoint in speaker identity (voice + variant): see speakers.tsv and clips.tsv.\n"
    )


def summarize(sessions: list[Session], clips: list[dict], words: list[str]) -> dict:
    """Counts of the corpus: clips, sessions and identities, overall and per split."""
    out = {"clips": len(clips), "sessions": len(sessions), "words": len(words),
           "identities": len({s.identity for s in sessions})}  # fmt: skip
    for split in SPLITS:
        mine = [s for s in sessions if s.split == split]
        out[f"{split}_clips"] = sum(c["split"] == split for c in clips)
        out[f"{split}_sessions"] = len(mine)
        out[f"{split}_identities"] = len({s.identity for s in mine})
    return out


def synthesize_corpus(root: str | os.PathLike, cfg: dict, progress: bool = True) -> dict:
    """Write the whole corpus under ``root`` and return :func:`summarize`'s counts.

    ``cfg`` is the validated ``corpus`` section of the config. The result is a pure function of
    ``cfg`` (and the espeak-ng data version) when made in a fresh process. Torch runs on one
    thread meanwhile, so the resampled audio does not depend on the machine's core count.
    """
    import torch
    from tqdm import tqdm

    from workflow_scripts.data.espeak import engine as get_engine

    problems = config_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    root = Path(root)
    eng = get_engine()
    check_voices(eng, list(cfg["voices"]), list(cfg["variants"]))
    words = list(cfg.get("words") or SPEECH_COMMANDS_WORDS)
    sessions = make_sessions(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resample = A.make_resampler(eng.sample_rate)
        banks = noise_banks(eng, resample, sessions, cfg)
        render = ClipRenderer(eng, cfg, banks, resample)
        for w in words:
            (root / w).mkdir(parents=True, exist_ok=True)
        clips = []
        total = len(sessions) * len(words) * cfg["repeats"]
        bar = tqdm(total=total, desc="synthesising clips", disable=not progress, mininterval=5)
        for s in sessions:
            for word in words:
                for rep in range(cfg["repeats"]):
                    wi = SPEECH_COMMANDS_WORDS.index(word)
                    rng = np.random.default_rng([cfg["seed"], 13, int(s.session, 16), wi, rep])
                    clip, draws = render(word, s, rng)
                    rel = f"{word}/{s.session}_nohash_{rep}.wav"
                    _write_wav_atomic(root / rel, clip)
                    clips.append({"path": rel, "session": s.session, "identity": s.identity,
                                  "split": s.split, **draws})  # fmt: skip
                    bar.update(1)
        bar.close()
    finally:
        torch.set_num_threads(threads)
    _write_tables(root, sessions, clips, banks)
    return summarize(sessions, clips, words)
