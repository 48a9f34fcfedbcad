"""Cache tensors as lazy arrays of rows, so that a trainer indexes a cache like a numpy array
and reads only the mini-batch it asks for.

* :class:`CachedRows`: one per-clip tensor (``feature_projection``, ``labels``, ``final``) or
  one hidden state (an index, or ``"final"`` = what the classifier head reads) of a
  :class:`~workflow_scripts.backbones.cachefile.CacheFile`, optionally its first ``limit``
  rows. ``rows[idx]`` reads rows ``idx`` (an index array in any order, a boolean mask of
  every row, or a slice) with ``os.pread``; nothing else is held.
* :class:`StackedRows`: several of those (or arrays) one after the other, as one row space
  (the mimic cell's training rows, then its validation rows).

Both have ``len``, ``shape``, ``dtype`` and ``ndim``, which is all that the mimic trainers
(:mod:`workflow_scripts.mimic.train`) and the structured-pruning trainer
(:func:`workflow_scripts.structured.train.train_gates`) use of an array; the values keep the
cache's dtype (float16), the trainers cast each batch to float32 on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workflow_scripts.backbones.cachefile import CacheFile


def _rows(idx, n: int) -> np.ndarray | slice:
    """A slice stays a slice (one contiguous read); a boolean mask of ``n`` rows selects the
    rows where it is true (as numpy does); anything else becomes an int64 array,
    bounds-checked against ``n``."""
    if isinstance(idx, slice):
        return idx
    a = np.asarray(idx)
    if a.dtype == np.bool_:
        if a.shape != (n,):
            raise IndexError(f"a boolean mask of shape {a.shape} for {n} rows")
        return np.flatnonzero(a)
    a = a.astype(np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise IndexError(f"rows out of range 0..{n - 1}")
    return a


class CachedRows:
    """Rows of one tensor or hidden state of a cache file, read on indexing (see the module
    docstring). ``key``: ``"feature_projection"``, ``"labels"``, ``"final"`` or a hidden-state
    index; ``limit``: only the first ``limit`` clips (None = all)."""

    def __init__(self, cache: CacheFile | str, key: str | int, limit: int | None = None):
        self.cache = cache if isinstance(cache, CacheFile) else CacheFile(cache)
        self.key = key
        if isinstance(key, str) and key != "final":
            shape = self.cache.shapes[key]
        else:
            if not self.cache.has(key):
                raise KeyError(f"{self.cache.path} does not store state {key} "
                               f"(stores {self.cache.states})")  # fmt: skip
            shape = self.cache.shapes["hidden_states"][1:]
        self.n = shape[0] if limit is None else min(int(limit), shape[0])
        self.shape = (self.n, *shape[1:])
        self.dtype = np.dtype(np.int64 if key == "labels" else np.float16)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx) -> np.ndarray:
        rows = _rows(idx, self.n)
        if isinstance(rows, slice):
            rows = slice(*rows.indices(self.n))
        if isinstance(self.key, str) and self.key != "final":
            return self.cache.read(self.key, rows)
        return self.cache.read_state(self.key, rows)


class StackedRows:
    """Row-wise concatenation of array-likes (:class:`CachedRows` or arrays) of equal row
    shape and dtype, without copying: row ``len(parts[0])`` is the first row of
    ``parts[1]``, and so on."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)
        shapes = {tuple(p.shape[1:]) for p in self.parts}
        if len(shapes) != 1:
            raise ValueError(f"parts of different row shapes {sorted(shapes)}")
        self.starts = np.cumsum([0, *(len(p) for p in self.parts)])
        self.shape = (int(self.starts[-1]), *shapes.pop())
        self.dtype = np.dtype(self.parts[0].dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        rows = _rows(idx, len(self))
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for part, start, stop in zip(self.parts, self.starts[:-1], self.starts[1:], strict=True):
            mine = (rows >= start) & (rows < stop)
            if mine.any():
                out[mine] = part[rows[mine] - start]
        return out
