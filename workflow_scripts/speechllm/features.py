"""The SpeechLLM stage's feature files: the frozen encoder's hidden state of every utterance of a
speech split, written as it is computed and read back utterance by utterance, so that neither the
features job nor SpeechLLM training holds a split's audio or features in memory.

Layout (any safetensors reader opens it): ``features`` (F, D) float32, the frames of all
utterances in manifest order, and ``lengths`` (N,) int64, each utterance's frame count.

The total frame count is known only when the last utterance is encoded, so the writer appends
frames after a header slot sized for any shape and writes the header into it at the end
(:class:`FeatureWriter`); the file is renamed into place only then. :class:`Features` reads an
utterance's frames with ``os.pread``: memory proportional to the utterances asked for (a
mini-batch), never to the file. Disk: 4 bytes x frames x D (the shipped encoders, 50 frames/s, D =
128: 25.6 KB per second of speech; a 768-wide base encoder: 154 KB per second, so 960 h of speech
take 530 GB; see docs/scaling.md).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.backbones.cachefile import CacheFile, _header, apply_umask

_BIG = (10**13, 10**5, 10**12)  # frames, D, utterances: bounds that size the header slot


class FeatureWriter:
    """Append utterances' (frames, D) features; ``close()`` puts the feature file at ``path``
    (atomic rename), ``abort()`` (or an exception inside ``with``) removes the partial file.
    ``metadata`` goes into the safetensors header (strings).

    The frames go straight into ``.<name>.tmp`` after a header slot sized for any shape (a
    safetensors header may end in spaces), so the data is written once and the disk holds one
    copy; ``close()`` appends the lengths and writes the header into its slot. A job killed
    mid-way leaves that ``.tmp``; the rerun truncates it."""

    def __init__(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        self.slot = len(self._header(*_BIG)) + 64
        self.fd: int | None = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.pos = self.slot
        self.lengths: list[int] = []
        self.dim: int | None = None

    def _header(self, frames: int, dim: int, n: int) -> bytes:
        return _header({"features": (np.float32, (frames, dim)), "lengths": (np.int64, (n,))},
                       self.metadata)  # fmt: skip

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, self.pos)
            self.pos += done
            view = view[done:]

    def add(self, frames) -> None:
        """One utterance's features (frames, D), stored as float32."""
        a = np.ascontiguousarray(
            frames.detach().cpu().numpy() if torch.is_tensor(frames) else frames, np.float32
        )
        if a.ndim != 2 or (self.dim is not None and a.shape[1] != self.dim):
            want = f"(frames, {self.dim})"
            raise ValueError(f"utterance features of shape {a.shape}; expected {want}")
        self.dim = a.shape[1]
        self._write(a.tobytes())
        self.lengths.append(a.shape[0])

    def close(self) -> int:
        """Finish the file and rename it into place; returns the number of utterances."""
        try:
            self._write(np.asarray(self.lengths, np.int64).tobytes())
            head = self._header(sum(self.lengths), self.dim or 0, len(self.lengths))
            if len(head) > self.slot:
                raise ValueError(f"{self.path}: header of {len(head)} bytes > slot {self.slot}")
            text = head[8:] + b" " * (self.slot - len(head))
            os.pwrite(self.fd, struct.pack("<Q", len(text)) + text, 0)
            os.fsync(self.fd)
            apply_umask(self.tmp)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        os.close(self.fd)
        self.fd = None
        return len(self.lengths)

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type:
            self.abort()
        elif self.fd is not None:
            self.close()


def write_features(path: str | os.PathLike, feats: Iterable, metadata: dict | None = None) -> int:
    """Write a feature file from an iterable of (frames, D) features (consumed one at a time);
    returns the number of utterances."""
    with FeatureWriter(path, metadata) as w:
        for f in feats:
            w.add(f)
    return len(w.lengths)


def encode_split(encoder, speech_dir: str | os.PathLike, rows, layer: int,
                 out: str | os.PathLike, metadata: dict | None = None, progress: bool = True,
                 desc: str = "encode") -> int:  # fmt: skip
    """Encode the utterances of manifest ``rows`` of ``speech_dir`` (hidden state ``layer``) into
    the feature file ``out``, one utterance in memory at a time, with a tqdm bar; returns the
    number of utterances."""
    from tqdm import tqdm

    from workflow_scripts.speechllm.model import iter_encode
    from workflow_scripts.speechllm.speech import iter_audio

    audio = tqdm(iter_audio(speech_dir, rows), total=len(rows), desc=desc, mininterval=10,
                 disable=not progress)  # fmt: skip
    return write_features(out, iter_encode(encoder, audio, layer), metadata)


class Features(Sequence):
    """A feature file opened for reading, as a sequence of (frames, D) float32 tensors (its first
    ``limit`` utterances): ``feats[i]`` and ``feats[a:b]`` (a list) read only those frames."""

    def __init__(self, path: str | os.PathLike, limit: int | None = None) -> None:
        self.path = Path(path)
        self._file = CacheFile(self.path)
        lengths = self._file.read("lengths")
        self.lengths = lengths if limit is None else lengths[: int(limit)]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.dim = int(self._file.shapes["features"][1])

    @property
    def metadata(self) -> dict:
        return self._file.metadata

    def __len__(self) -> int:
        return len(self.lengths)

    def _one(self, i: int) -> torch.Tensor:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return torch.from_numpy(self._file.read("features", slice(a, b)))

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1 or start >= stop:
                return [self._one(k) for k in range(start, stop, step)]
            # consecutive utterances (an evaluation batch): their frames in one read
            frames = self._file.read("features", slice(int(self.offsets[start]),
                                                       int(self.offsets[stop])))  # fmt: skip
            return list(torch.split(torch.from_numpy(frames), self.lengths[start:stop].tolist()))
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"utterance {i} of {n}")
        return self._one(i % n)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self._one(k) for k in range(len(self)))
