"""The SpeechLLM stage's feature files: the frozen encoder's hidden state of every utterance of a
speech split, written as it is computed and read back utterance by utterance, so that neither the
features job nor SpeechLLM training holds a split's audio or features in memory.

Layout (any safetensors reader opens it): ``features`` (F, D) float32, the frames of all
utterances in manifest order, and ``lengths`` (N,) int64, each utterance's frame count.

The total frame count is known only when the last utterance is encoded, so the writer appends frames
to a temporary data file and, on ``close()``, writes the header and copies the data after it in 8
MiB chunks; the file is renamed into place only then (a killed job leaves none). :class:`Features`
reads an utterance's frames with ``os.pread``: memory proportional to the utterances asked for (a
mini-batch), never to the file. Disk: 4 bytes x frames x D (the shipped encoders, 50 frames/s, D =
128: 25.6 KB per second of speech; a 768-wide base encoder: 154 KB per second, so 960 h of speech
take 530 GB; see docs/scaling.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.backbones.cachefile import CacheFile, _header, apply_umask

_CHUNK = 8 << 20


class FeatureWriter:
    """Append utterances' (frames, D) features; ``close()`` writes the feature file at ``path``
    atomically, ``abort()`` (or an exception inside ``with``) leaves nothing. ``metadata`` goes
    into the safetensors header (strings)."""

    def __init__(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data = self.path.with_name(f".{self.path.name}.{os.getpid()}.data")
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.fd = os.open(self.data, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.metadata = dict(metadata or {})
        self.lengths: list[int] = []
        self.dim: int | None = None

    def add(self, frames) -> None:
        """One utterance's features (frames, D), stored as float32."""
        a = np.ascontiguousarray(
            frames.detach().cpu().numpy() if torch.is_tensor(frames) else frames, np.float32
        )
        if a.ndim != 2 or (self.dim is not None and a.shape[1] != self.dim):
            want = f"(frames, {self.dim})"
            raise ValueError(f"utterance features of shape {a.shape}; expected {want}")
        self.dim = a.shape[1]
        os.write(self.fd, a.tobytes())
        self.lengths.append(a.shape[0])

    def close(self) -> int:
        """Write the file; returns the number of utterances."""
        frames, dim = sum(self.lengths), self.dim or 0
        lengths = np.asarray(self.lengths, np.int64)
        head = _header({"features": (np.float32, (frames, dim)),
                        "lengths": (np.int64, lengths.shape)}, self.metadata)  # fmt: skip
        size = frames * dim * 4
        try:
            with open(self.tmp, "wb") as out:
                out.write(head)
                out.flush()
                _copy(self.fd, out.fileno(), size)
                out.write(lengths.tobytes())
                out.flush()
                os.fsync(out.fileno())
            apply_umask(self.tmp)
            os.replace(self.tmp, self.path)
        finally:
            os.close(self.fd)
            self.data.unlink(missing_ok=True)
            self.tmp.unlink(missing_ok=True)
        return len(self.lengths)

    def abort(self) -> None:
        os.close(self.fd)
        self.data.unlink(missing_ok=True)
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type:
            self.abort()
        else:
            self.close()


def _copy(src: int, dst: int, size: int) -> None:
    """``size`` bytes of ``src`` from offset 0 appended to ``dst`` in bounded chunks."""
    pos = 0
    while pos < size:
        n = min(_CHUNK, size - pos)
        chunk = os.pread(src, n, pos)
        if not chunk:
            raise OSError(f"short read of the feature data ({pos} of {size} bytes)")
        os.write(dst, chunk)
        pos += len(chunk)


def write_features(path: str | os.PathLike, feats: Iterable, metadata: dict | None = None) -> int:
    """Write a feature file from an iterable of (frames, D) features (consumed one at a time);
    returns the number of utterances."""
    with FeatureWriter(path, metadata) as w:
        for f in feats:
            w.add(f)
    return len(w.lengths)


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
            return [self._one(k) for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"utterance {i} of {n}")
        return self._one(i % n)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self._one(k) for k in range(len(self)))
