"""Minimal ctypes binding to the espeak-ng library shipped by the ``espeakng-loader`` wheel.

Only what the corpus synthesiser needs: initialise in synchronous mode, choose a voice by
name, set rate / pitch / pitch range, and synthesise a text into a float32 waveform at the
library's native sample rate (22,050 Hz). No system package is used.

espeak-ng draws its noise (the breath noise of variants such as ``f2``, ``whisper``) from its own
generator, which ``espeak_Initialize`` seeds from the clock, and some noise from the C
library's ``rand()``: unseeded, such variants sound different in every process.
:meth:`Espeak.synth` seeds both (``noise_seed``) right before each synthesis, so the noise is
a function of the call. The pitch-flutter phase is still carried from call to call: a
waveform depends on the calls made before it in the process (and on nothing else).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

# espeak_AUDIO_OUTPUT
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
ESPEAK_RATE = 1
ESPEAK_VOLUME = 2
ESPEAK_PITCH = 3
ESPEAK_RANGE = 4
ESPEAK_WORDGAP = 7
# position type / flags
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
EE_OK = 0

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """Raised when espeak-ng cannot be loaded or rejects a voice or a parameter."""


class Espeak:
    """A process-wide espeak-ng engine (the C library keeps global state).

    Use :func:`engine` to get the shared instance.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - dependency is pinned
            raise EspeakError("the 'espeakng-loader' package is not installed") from exc
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
        # espeak-ng looks for "<path>/espeak-ng-data"; the loader returns that folder itself.
        parent = data.rsplit("/espeak-ng-data", 1)[0]
        lib = self._lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        self._srand = ctypes.CDLL(None).srand  # the libc rand() that libespeak-ng also calls
        self._srand.argtypes = [ctypes.c_uint]
        self._srand.restype = None
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, parent.encode(), 0)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}); data path {data}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: ctypes callbacks are GC'd
        lib.espeak_SetSynthCallback(self._cb)
        self._lock = threading.Lock()
        self._voice: str | None = None

    def _on_audio(self, wav, numsamples, _events) -> int:
        if numsamples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def check_voice(self, name: str) -> bool:
        """True when espeak-ng accepts the voice name (with an optional ``+variant``)."""
        with self._lock:
            self._voice = None
            return self._lib.espeak_SetVoiceByName(name.encode()) == EE_OK

    def synth(
        self,
        text: str,
        voice: str,
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        noise_seed: int | None = None,
    ) -> np.ndarray:
        """Synthesise ``text`` and return float32 samples in [-1, 1] at ``self.sample_rate``.

        ``rate`` is words per minute (80..450), ``pitch`` and ``pitch_range`` are 0..100.
        ``noise_seed`` (0..2**31-1) seeds espeak-ng's noise sources for this call (see the
        module docstring); None leaves them where earlier calls left them.
        """
        with self._lock:
            if voice != self._voice:  # switching voices reloads files: skip when unchanged
                if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                    raise EspeakError(f"espeak-ng rejected voice {voice!r}")
                self._voice = voice
            for param, value in (
                (ESPEAK_RATE, rate),
                (ESPEAK_PITCH, pitch),
                (ESPEAK_RANGE, pitch_range),
                (ESPEAK_VOLUME, 100),
            ):
                if self._lib.espeak_SetParameter(param, int(value), 0) != EE_OK:
                    raise EspeakError(f"espeak-ng rejected parameter {param}={value}")
            self._chunks = []
            if noise_seed is not None:
                lib_seed = int(noise_seed) & 0x7FFFFFFF
                if self._lib.espeak_ng_SetRandSeed(lib_seed) != EE_OK:
                    raise EspeakError("espeak_ng_SetRandSeed failed")
                self._srand(lib_seed)
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self._lib.espeak_Synth(
                buf, len(buf), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
            )
            if err != EE_OK:
                raise EspeakError(f"espeak_Synth failed with code {err} for {text!r}")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """The shared espeak-ng engine, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
