"""Clips addressed by index and read when asked (:class:`ClipSet`): the training, evaluation
and test clips of every stage (fine-tuning, layer pruning and its healing, the sweeps), audio
files decoded per batch or a small in-memory array. Torch-free."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial

import numpy as np


def _read_files(root: str, paths: list[str], idx: np.ndarray) -> np.ndarray:
    from workflow_scripts.data.loader import read_clips

    return read_clips(root, [paths[i] for i in idx])


class ClipSet:
    """Clips addressed by index and read when asked: float32 (b, samples) audio of index
    arrays, in the order given, with their int64 ``labels`` (held in memory). From a
    manifest's rows (:meth:`from_rows`: the files, decoded per batch) or an in-memory array
    (:meth:`from_array`, small sets). A map-style dataset for ``torch.utils.data.DataLoader``:
    ``__getitems__`` reads a whole batch as (audio, labels, indices)."""

    def __init__(self, labels, read: Callable[[np.ndarray], np.ndarray], in_memory: bool,
                 identity: str):  # fmt: skip
        self.labels = np.asarray(labels, dtype=np.int64)
        self._read = read
        self.in_memory = in_memory
        self.identity = identity  # changes when the clips do (see frozen_features)

    @classmethod
    def from_array(cls, audio, labels) -> ClipSet:
        audio = np.asarray(audio, dtype=np.float32)
        digest = hashlib.sha256(np.ascontiguousarray(audio).data).hexdigest()
        return cls(labels, audio.__getitem__, True, digest)

    @classmethod
    def from_rows(cls, root, rows, in_memory: bool = False) -> ClipSet:
        """The clips of manifest ``rows`` (``data.loader.split_rows``) under ``root``; with
        ``in_memory`` read now (a set bounded by a setting)."""
        paths, labels = list(rows.path), rows.label_idx.to_numpy(np.int64)
        if in_memory:
            return cls.from_array(_read_files(str(root), paths, np.arange(len(paths))), labels)
        files = rows.sha256 if "sha256" in rows else rows.path
        digest = hashlib.sha256("\n".join([str(root), *map(str, files)]).encode()).hexdigest()
        return cls(labels, partial(_read_files, str(root), paths), False, digest)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, idx) -> np.ndarray:
        return self._read(np.asarray(idx, dtype=np.int64))

    def __getitems__(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        return self.read(idx), self.labels[idx], idx

    def __getitem__(self, i):
        audio, labels, _ = self.__getitems__([i])
        return audio[0], labels[0]

    def head(self, k: int) -> ClipSet:
        """The first ``k`` clips, in memory."""
        idx = np.arange(min(k, len(self)))
        return ClipSet.from_array(self.read(idx), self.labels[idx])

    def batches(self, batch_size: int):
        """(audio, labels) of consecutive clips, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield self.read(idx), self.labels[idx]


def as_clips(audio, labels=None) -> ClipSet:
    """``audio`` if it is a :class:`ClipSet`, else the in-memory clips (audio, labels)."""
    return audio if isinstance(audio, ClipSet) else ClipSet.from_array(audio, labels)
