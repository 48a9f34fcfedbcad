"""Synthetic spoken-keyword corpus in the exact Speech Commands v0.02 layout.

Every "speaker" is a fixed combination of an espeak-ng voice (language/accent variant), a voice
variant (``+m3``, ``+f2``, ``+klatt``...), speaking rate, pitch, pitch range, loudness and a
background-noise level. Repeats of a word by the same speaker jitter rate and pitch slightly and
draw fresh noise and a fresh position in the 1-s window, so that repeats are close but not equal.

Layout written (as in the real data set)::

    <root>/<word>/<speaker>_nohash_<n>.wav     16 kHz, mono, 16-bit PCM, 1 s
    <root>/_background_noise_/*.wav
    <root>/validation_list.txt                 relative paths of validation clips
    <root>/testing_list.txt                    relative paths of test clips

Splits are speaker-disjoint: a speaker's split is a pure function of its id (SHA-1 bucket, as
the original data set's ``which_set``), so adding speakers never moves an existing one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SPEECH_COMMANDS_WORDS: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
    "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
    "yes", "zero",
)  # fmt: skip

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # as in the Speech Commands README's which_set


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: everything that stays fixed across its recordings."""

    id: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    gain_db: float
    snr_db: float


def speaker_id(seed: int, index: int) -> str:
    """An 8-hex-digit id like the real data set's, a pure function of (seed, index)."""
    return hashlib.sha1(f"synthetic-speaker:{seed}:{index}".encode()).hexdigest()[:8]


def which_set(speaker: str, validation_percentage: float, testing_percentage: float) -> str:
    """Speech Commands' split rule: hash the speaker id into [0, 100) percent buckets."""
    h = int(hashlib.sha1(speaker.encode()).hexdigest(), 16)
    pct = (h % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if pct < validation_percentage:
        return "validation"
    if pct < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def make_speakers(cfg: dict) -> list[Speaker]:
    """Draw ``cfg['speakers']`` speakers deterministically from ``cfg['seed']``."""
    rng = np.random.default_rng(cfg["seed"])
    voices, variants = list(cfg["voices"]), list(cfg["variants"])
    out = []
    for i in range(cfg["speakers"]):
        voice = voices[rng.integers(len(voices))]
        variant = variants[rng.integers(len(variants))]
        out.append(
            Speaker(
                id=speaker_id(cfg["seed"], i),
                voice=f"{voice}+{variant}" if variant else voice,
                rate=int(rng.integers(cfg["rate"][0], cfg["rate"][1] + 1)),
                pitch=int(rng.integers(cfg["pitch"][0], cfg["pitch"][1] + 1)),
                pitch_range=int(rng.integers(cfg["pitch_range"][0], cfg["pitch_range"][1] + 1)),
                gain_db=float(rng.uniform(-12.0, 0.0)),
                snr_db=float(rng.uniform(cfg["snr_db"][0], cfg["snr_db"][1])),
            )
        )
    return out


# Variants whose breath noise makes espeak-ng's output differ between processes: two fresh
# syntheses of the 300-speaker corpus differed in 770 of 10,500 clips, every one of them from
# a speaker with one of these variants (all with multi-formant `breath` settings); every other
# clip was byte-identical. A corpus with them would not be a function of its config.
NONDETERMINISTIC_VARIANTS = ("f2", "f3", "f5")


def nondeterministic_variants_problem(variants: list[str]) -> str | None:
    """The complaint about ``variants`` that are in ``NONDETERMINISTIC_VARIANTS``, or None.
    Config validation reports it before any job runs; ``check_voices`` raises it."""
    noisy = [v for v in variants if v in NONDETERMINISTIC_VARIANTS]
    if not noisy:
        return None
    return (
        f"config.corpus.variants: {noisy} give different audio in every process (espeak-ng's "
        "breath noise), so the corpus would not be reproducible; remove them"
    )


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


def place_in_window(
    speech: np.ndarray, rng: np.random.Generator, n: int = CLIP_SAMPLES
) -> np.ndarray:
    """Trim leading/trailing near-silence, then put the speech at a random offset in n samples
    (cropping the middle of over-long speech)."""
    if speech.size:
        env = np.abs(speech)
        thr = 0.02 * env.max() if env.max() > 0 else 0.0
        idx = np.flatnonzero(env > thr)
        if idx.size:
            speech = speech[idx[0] : idx[-1] + 1]
    out = np.zeros(n, dtype=np.float32)
    if speech.size >= n:
        start = (speech.size - n) // 2
        out[:] = speech[start : start + n]
        return out
    offset = int(rng.integers(0, n - speech.size + 1))
    out[offset : offset + speech.size] = speech
    return out


def render_clip(
    engine, word: str, spk: Speaker, rng: np.random.Generator, repeat: int, resampler
) -> np.ndarray:
    """One 1-s, 16-kHz float32 clip of ``word`` spoken by ``spk`` (repeat ``repeat``)."""
    jitter = repeat > 0
    rate = spk.rate + (int(rng.integers(-8, 9)) if jitter else 0)
    pitch = int(np.clip(spk.pitch + (int(rng.integers(-3, 4)) if jitter else 0), 0, 100))
    raw = engine.synth(word, spk.voice, rate=rate, pitch=pitch, pitch_range=spk.pitch_range)
    speech = resampler(raw)
    peak = float(np.abs(speech).max()) if speech.size else 0.0
    if peak > 0:
        speech = speech / peak * 0.9 * 10 ** (spk.gain_db / 20)
    clip = place_in_window(speech, rng)
    power = float(np.mean(clip**2)) or 1e-8
    noise = rng.standard_normal(clip.size).astype(np.float32)
    clip = clip + noise * np.sqrt(power / 10 ** (spk.snr_db / 10)).astype(np.float32)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def make_resampler(orig_sr: int, new_sr: int = SAMPLE_RATE):
    """A numpy -> numpy resampler built on torchaudio's windowed-sinc resampling."""
    import torch
    import torchaudio.transforms as T

    transform = T.Resample(orig_sr, new_sr)  # the sinc kernel is built once, not per clip

    def resample(x: np.ndarray) -> np.ndarray:
        if orig_sr == new_sr or x.size == 0:
            return x.astype(np.float32)
        with torch.inference_mode():
            return transform(torch.from_numpy(x)).numpy()

    return resample


def _write_wav_atomic(path: Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, audio, sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def synthesize_corpus(root: str | os.PathLike, cfg: dict, progress: bool = True) -> dict:
    """Write the whole corpus under ``root`` and return a summary (counts per split, speakers).

    ``cfg`` is the validated ``corpus`` section of the config. The result is a pure function of
    ``cfg`` (and the espeak-ng data version).
    """
    from tqdm import tqdm

    from workflow_scripts.data.espeak import engine as get_engine

    root = Path(root)
    eng = get_engine()
    check_voices(eng, list(cfg["voices"]), list(cfg["variants"]))
    words = list(cfg.get("words") or SPEECH_COMMANDS_WORDS)
    speakers = make_speakers(cfg)
    resampler = make_resampler(eng.sample_rate)
    for w in words:
        (root / w).mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"validation": [], "testing": [], "training": []}
    total = len(speakers) * len(words) * cfg["repeats"]
    bar = tqdm(total=total, desc="synthesising clips", disable=not progress, mininterval=5)
    for si, spk in enumerate(speakers):
        split = which_set(spk.id, cfg["validation_percentage"], cfg["testing_percentage"])
        for wi, word in enumerate(words):
            for rep in range(cfg["repeats"]):
                rng = np.random.default_rng([cfg["seed"], si, wi, rep])
                clip = render_clip(eng, word, spk, rng, rep, resampler)
                rel = f"{word}/{spk.id}_nohash_{rep}.wav"
                _write_wav_atomic(root / rel, clip)
                lists[split].append(rel)
                bar.update(1)
    bar.close()
    noise_dir = root / "_background_noise_"
    noise_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng([cfg["seed"], 999])
    white = (0.1 * rng.standard_normal(SAMPLE_RATE * 10)).clip(-1, 1).astype(np.float32)
    _write_wav_atomic(noise_dir / "white_noise.wav", white)
    pink = np.cumsum(rng.standard_normal(SAMPLE_RATE * 10)).astype(np.float32)
    pink = (pink - pink.mean()) / (np.abs(pink - pink.mean()).max() + 1e-8) * 0.3
    _write_wav_atomic(noise_dir / "brown_noise.wav", pink.astype(np.float32))
    for name, key in (("validation_list.txt", "validation"), ("testing_list.txt", "testing")):
        tmp = root / (name + ".tmp")
        tmp.write_text("".join(f"{p}\n" for p in sorted(lists[key])))
        os.replace(tmp, root / name)
    (root / "README.md").write_text(
        "Synthetic Speech Commands v0.02 look-alike made with espeak-ng by this project's\n"
        "`synthesize_corpus` rule. Not real speech; layout and split rule match the original.\n"
    )
    (root / "speakers.tsv").write_text(
        "\t".join(asdict(speakers[0]).keys())
        + "\n"
        + "".join("\t".join(str(v) for v in asdict(s).values()) + "\n" for s in speakers)
    )
    return {
        "clips": total,
        "speakers": len(speakers),
        "words": len(words),
        **{f"{k}_clips": len(v) for k, v in lists.items()},
    }
