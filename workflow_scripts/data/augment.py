"""Signal-level augmentations of the synthetic corpus: placement in the 1-s window, speed
perturbation, synthetic room reverberation, and additive noise (white, pink, brown, babble) at
a given SNR. Every function takes its randomness from a ``numpy.random.Generator`` the caller
seeds from the config, so the corpus stays a pure function of its config.

Torch-free at import (``make_resampler`` imports torch when called).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000
NOISE_TYPES = ("white", "pink", "brown", "babble")
# ln(1000): an amplitude envelope exp(-DECAY_60DB * t / rt60) has fallen by 60 dB at rt60
DECAY_60DB = float(np.log(1000.0))
REVERB_PREDELAY_S = 0.0025  # gap between the direct sound and the diffuse tail


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


def make_resampler(orig_sr: int, new_sr: int = SAMPLE_RATE):
    """A numpy -> numpy resampler built on torchaudio's windowed-sinc resampling (the kernel is
    built once, not per call). Rates are reduced by their gcd, so small integer ratios are
    cheap."""
    import torch
    import torchaudio.transforms as T

    transform = T.Resample(orig_sr, new_sr)

    def resample(x: np.ndarray) -> np.ndarray:
        if orig_sr == new_sr or x.size == 0:
            return x.astype(np.float32)
        with torch.inference_mode():
            return transform(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return resample


def speed_fraction(speed: float) -> Fraction:
    """``speed`` rounded to a multiple of 0.01, as a fraction: the resampling ratio stays a
    ratio of small integers (cheap kernels, at most one per distinct value)."""
    return Fraction(round(speed * 100), 100)


class SpeedPerturber:
    """Kaldi-style speed perturbation: play the waveform ``speed`` times faster, which scales
    duration by 1/speed and every frequency (pitch and formants) by speed. One resampling kernel
    per distinct speed (rounded to 0.01, see :func:`speed_fraction`), built on first use."""

    def __init__(self) -> None:
        self._resamplers: dict[Fraction, object] = {}

    def __call__(self, x: np.ndarray, speed: float) -> np.ndarray:
        frac = speed_fraction(speed)
        if frac == 1:
            return x.astype(np.float32)
        if frac not in self._resamplers:
            # n samples -> n / speed samples: resample from rate p to rate q with p/q = speed
            self._resamplers[frac] = make_resampler(frac.numerator, frac.denominator)
        return self._resamplers[frac](x)


def room_impulse_response(
    rt60: float, drr_db: float, rng: np.random.Generator, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path, then (after a 2.5-ms pre-delay)
    Gaussian noise under an exponential envelope that falls 60 dB in ``rt60`` seconds, scaled so
    that direct / tail energy is ``drr_db`` (the direct-to-reverberant ratio)."""
    n_tail = max(1, int(round(rt60 * sr)))
    delay = int(round(REVERB_PREDELAY_S * sr))
    t = np.arange(n_tail) / sr
    tail = rng.standard_normal(n_tail) * np.exp(-DECAY_60DB * t / rt60)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    h = np.zeros(delay + n_tail)
    h[0] = 1.0
    h[delay:] += tail
    return h


def convolve_in_window(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``h`` (FFT), cut to ``len(x)``: the room's tail past the end of the
    recording window is lost, as in a real 1-s recording."""
    n = x.size + h.size - 1
    nfft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[: x.size]
    return y.astype(np.float32)


def reverberate(
    clip: np.ndarray, rt60: float, drr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """``clip`` in a synthetic room (:func:`room_impulse_response`), rescaled to the dry clip's
    peak so that the session's loudness (its gain) is kept."""
    wet = convolve_in_window(clip, room_impulse_response(rt60, drr_db, rng))
    peak_dry, peak_wet = float(np.abs(clip).max()), float(np.abs(wet).max())
    if peak_wet > 0:
        wet *= peak_dry / peak_wet
    return wet


def schroeder_rt60(h: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """RT60 of an impulse response measured by Schroeder backward integration: the time the
    energy decay curve takes from -5 to -25 dB (T20), times 3."""
    edc = np.cumsum((h**2)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0] + 1e-30)
    t5, t25 = np.argmax(edc_db <= -5), np.argmax(edc_db <= -25)
    return 3.0 * (t25 - t5) / sr


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-RMS noise with a 1/f^alpha power spectrum: white (alpha 0), pink
    (1, -3 dB per octave) or brown (2, -6 dB per octave); shaped in the frequency domain, with
    the bins below 20 Hz removed so brown noise does not wander."""
    alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    gain = np.zeros_like(f)
    keep = f >= 20.0
    gain[keep] = f[keep] ** (-alpha / 2)
    x = np.fft.irfft(spec * gain, n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def mix_babble(talkers: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Babble: the sum of several talkers' speech (each looped to ``n`` samples from a random
    start and brought to unit RMS), normalised to unit RMS."""
    out = np.zeros(n)
    for speech in talkers:
        reps = -(-n // max(speech.size, 1)) + 1
        looped = np.tile(speech, reps)
        start = int(rng.integers(0, speech.size))
        seg = looped[start : start + n].astype(np.float64)
        out += seg / (np.sqrt(np.mean(seg**2)) + 1e-12)
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def add_noise(
    clip: np.ndarray, bank: np.ndarray, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """``clip`` plus a random ``clip.size``-sample segment of the noise ``bank``, scaled so that
    the signal-to-noise ratio over the clip (mean power of the clip over mean power of the added
    noise, both over the whole window) is exactly ``snr_db``."""
    start = int(rng.integers(0, bank.size - clip.size + 1))
    seg = bank[start : start + clip.size].astype(np.float64)
    power = float(np.mean(clip.astype(np.float64) ** 2)) or 1e-8
    scale = np.sqrt(power / (10 ** (snr_db / 10) * (np.mean(seg**2) + 1e-20)))
    return (clip + seg * scale).astype(np.float32)
