"""The hidden-state cache file: a safetensors file preallocated once and written in place, batch
by batch, so that extraction never holds a split in memory; read back row by row.

Layout (``results/cache/{model}/{split}.safetensors``, any safetensors reader opens it):

- ``hidden_states`` (S, N, T, D) float16: the S stored states, in the order of the metadata
  ``states`` (hidden-state indices: 0 = the input of the first transformer block, i = the
  output of block i, as ``output_hidden_states``). The validation split stores every state
  (similarity needs all pairs); training and testing store only the states their consumers
  need (``backbones.cache_plan.cache_slice``);
- ``final`` (N, T, D) float16, only when the encoder's output differs from state L (pre-LN,
  "stable layer norm" models apply a final LayerNorm after the last block): what the
  classifier head reads. ``read_state(..., "final")`` gives state L when it is not stored;
- ``feature_projection`` (N, T, D) float16, when stored: the mimickers' input;
- ``labels`` (N,) int64; the clip paths and the provenance in the metadata.

Why this layout: one file per (model, split) keeps Snakemake's outputs and every reader
unchanged; state-major order makes one state of a set of rows a few contiguous reads;
preallocation lets the writer place each batch at its final offset (``os.pwrite``), and the
reader uses ``os.pread`` for the rows it needs (a trainer's mini-batch), so neither side's
memory grows with N. :meth:`CacheFile.memmap` maps a tensor for the similarity metrics, which
stream over it chunk by chunk (pages of a mapped file are page cache, evictable).
Disk: 2 bytes x N x T x D per stored state (wav2vec2-base, 49 frames: 75 KB per clip and state).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
_ALIGN = 8


def apply_umask(path: str | os.PathLike) -> None:
    """Give a written file the permissions the process umask allows (safetensors and temp
    files are created 0600), so that a lab sharing a project folder can read it."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _header(tensors: dict[str, tuple[np.dtype, tuple[int, ...]]], metadata: dict) -> bytes:
    """The header bytes (length prefix + JSON padded to 8 bytes) for tensors laid out in the
    given order, contiguous from offset 0."""
    head: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        head[name] = {"dtype": CODES[np.dtype(dtype)], "shape": list(map(int, shape)),
                      "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % _ALIGN)
    return struct.pack("<Q", len(text)) + text


class CacheWriter:
    """Create a cache file of known shapes and write it in place; ``close()`` renames the
    temp file into place (a killed job leaves no cache). Use as a context manager."""

    def __init__(self, path, tensors: dict[str, tuple], metadata: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        header = _header(tensors, metadata)
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(self.fd, header)
        self.layout = _Layout(json.loads(header[8:]), len(header))
        os.ftruncate(self.fd, len(header) + self.layout.size)  # sparse until written

    def write(self, name: str, start: int, rows: np.ndarray, state: int | None = None) -> None:
        """Rows ``start .. start+len(rows)`` of tensor ``name`` (of stored state position
        ``state`` for ``hidden_states``)."""
        t = self.layout.tensors[name]
        data = np.ascontiguousarray(rows, dtype=t.dtype)
        if data.shape[1:] != t.row_shape:
            raise ValueError(f"{name}: rows of shape {data.shape[1:]}, expected {t.row_shape}")
        os.pwrite(self.fd, data.tobytes(), t.row_offset(start, state))

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        apply_umask(self.tmp)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        os.close(self.fd)
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()


class _Tensor:
    def __init__(self, spec: dict, data_start: int):
        self.dtype = DTYPES[spec["dtype"]]
        self.shape = tuple(spec["shape"])
        self.offset = data_start + spec["data_offsets"][0]
        stacked = len(self.shape) == 4  # hidden_states: (S, N, T, D)
        self.n = self.shape[1] if stacked else self.shape[0]
        self.row_shape = self.shape[2:] if stacked else self.shape[1:]
        self.row_bytes = (
            int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize
        )

    def row_offset(self, row: int, state: int | None = None) -> int:
        return self.offset + ((state or 0) * self.n + row) * self.row_bytes


class _Layout:
    def __init__(self, header: dict, data_start: int):
        self.metadata = header.get("__metadata__", {})
        self.tensors = {k: _Tensor(v, data_start) for k, v in header.items() if k != "__metadata__"}
        self.size = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                        default=0)  # fmt: skip


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs (start, stop) of sorted unique row indices."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


class CacheFile:
    """A cache file opened for reading: shapes, metadata, and rows by ``os.pread`` (memory
    proportional to the rows asked for, never to the file)."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.layout = _Layout(header, 8 + n)
        self.metadata: dict = self.layout.metadata
        t = self.layout.tensors
        states = self.metadata.get("states")
        n_states = t["hidden_states"].shape[0] if "hidden_states" in t else 0
        self.states: list[int] = json.loads(states) if states else list(range(n_states))
        self.n = int(t["labels"].shape[0]) if "labels" in t else 0

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.layout.tensors.items()}

    @property
    def paths(self) -> list[str]:
        return json.loads(self.metadata.get("paths", "[]"))

    def has(self, state) -> bool:
        if state == "final":
            return "final" in self.layout.tensors or self.n_layers in self.states
        return int(state) in self.states

    @property
    def n_layers(self) -> int | None:
        value = self.metadata.get("n_layers")
        return int(value) if value else (max(self.states) if self.states else None)

    def _read(self, t: _Tensor, rows, state: int | None) -> np.ndarray:
        if rows is None:
            rows = slice(0, t.n)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(t.n)
            if step != 1:
                return self._read(t, np.arange(start, stop, step), state)
            idx = None
            runs, count = [(start, stop)], max(0, stop - start)
        else:
            idx = np.asarray(rows, dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= t.n):
                raise IndexError(f"rows out of range 0..{t.n - 1}")
            uniq = np.unique(idx)
            runs, count = _runs(uniq), len(uniq)
        out = np.empty((count, *t.row_shape), dtype=t.dtype)
        if out.size == 0:  # no rows (or empty rows): nothing to read
            return out if idx is None else out[np.searchsorted(uniq, idx)]
        flat = out.reshape(-1).view(np.uint8)
        fd, pos = os.open(self.path, os.O_RDONLY), 0
        try:
            for a, b in runs:
                size = (b - a) * t.row_bytes
                got = os.preadv(fd, [memoryview(flat)[pos : pos + size]], t.row_offset(a, state))
                if got != size:
                    raise OSError(f"{self.path}: short read ({got} of {size} bytes)")
                pos += size
        finally:
            os.close(fd)
        if idx is None:
            return out
        return out[np.searchsorted(uniq, idx)]

    def read(self, name: str, rows=None) -> np.ndarray:
        """Rows (all, a slice, or an index array in any order) of a per-clip tensor
        (``labels``, ``feature_projection``, ``final``)."""
        return self._read(self.layout.tensors[name], rows, None)

    def read_state(self, state, rows=None) -> np.ndarray:
        """Rows of one hidden state (index, or ``"final"`` = what the classifier head reads)."""
        if state == "final":
            if "final" in self.layout.tensors:
                return self.read("final", rows)
            state = self.n_layers
        if int(state) not in self.states:
            raise KeyError(f"{self.path} does not store state {state} (stores {self.states})")
        pos = self.states.index(int(state))
        return self._read(self.layout.tensors["hidden_states"], rows, pos)

    def memmap(self, name: str = "hidden_states") -> np.memmap:
        """A read-only memory map of a whole tensor (for the chunked similarity metrics)."""
        t = self.layout.tensors[name]
        return np.memmap(self.path, dtype=t.dtype, mode="r", offset=t.offset, shape=t.shape)


# ----------------------------------------------------------------------------------------
# Whole-array helpers (small caches: tests, a few hundred validation clips)
# ----------------------------------------------------------------------------------------
def write_cache(path, arrays: dict, labels: np.ndarray, paths: list[str],
                meta: dict | None = None, states: list[int] | None = None) -> None:  # fmt: skip
    """Write in-memory arrays (``hidden_states`` (S, N, T, D), optionally
    ``feature_projection`` / ``final`` (N, T, D)) as one cache file; ``states`` names the
    stored states (default 0..S-1)."""
    tensors = {"labels": (np.int64, (len(labels),))}
    for name in ("feature_projection", "final", "hidden_states"):
        if name in arrays:
            tensors[name] = (np.float16, arrays[name].shape)
    hs = arrays.get("hidden_states")
    states = list(range(hs.shape[0])) if states is None and hs is not None else states or []
    md = {"paths": json.dumps(paths), "states": json.dumps(states), **(meta or {})}
    with CacheWriter(path, tensors, md) as w:
        w.write("labels", 0, np.asarray(labels, dtype=np.int64))
        for name in ("feature_projection", "final"):
            if name in arrays:
                w.write(name, 0, arrays[name])
        for pos in range(len(states)):
            w.write("hidden_states", 0, hs[pos], state=pos)


def cache_info(path) -> dict:
    """Shapes and metadata of a cache without reading its tensors."""
    c = CacheFile(path)
    return {"shapes": c.shapes, "metadata": c.metadata, "states": c.states}


def read_layers(path, layers: list[int] | None = None, limit: int | None = None,
                mmap: bool = False) -> np.ndarray:  # fmt: skip
    """Hidden states (len(layers), N, T, D) float16 of the chosen state indices (all stored
    ones by default), optionally only the first ``limit`` clips. ``mmap=True`` (all states)
    returns a memory map instead of reading."""
    c = CacheFile(path)
    layers = c.states if layers is None else list(layers)
    stop = c.n if limit is None else min(limit, c.n)
    if mmap and layers == c.states:
        return c.memmap()[:, :stop]
    return np.stack([c.read_state(i, slice(0, stop)) for i in layers])


def read_array(path, key: str) -> np.ndarray:
    return CacheFile(path).read(key)
