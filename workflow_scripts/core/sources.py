"""Source inputs: files that no rule of the current config makes (shipped or user model
weights, a SpeechLLM's encoder and decoder, a real ``data.root``).

A plan marks them as :class:`Source`. The rules give them to Snakemake as ``ancient()`` file
inputs (their modification time says nothing: a ``git checkout`` that restores the same bytes
must not rerun anything) and put their content digests in ``params.sources``
(:func:`digests`), so new weights rerun exactly the jobs that read them and everything
downstream, and restoring the old weights makes the plan quiet again.

Digests are SHA-256 of the bytes, cached by (path, size, mtime, inode) in
``.snakemake/digests.json`` (like git's index), so an unchanged multi-GB checkpoint is hashed
once, not at every DAG build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workflow_scripts.core.provenance import sha256_file, sha256_path, write_text_atomic

#: Files in a model folder that do not change what the model computes.
BOOKKEEPING = {"DONE", "provenance.json", "loss_history.json", ".snakemake_timestamp",
               "README.md"}  # fmt: skip
CACHE = Path(".snakemake") / "digests.json"


class Source(str):
    """A path that no rule makes: an ``ancient()`` input with its digest in the params."""


def model_files(folder: str | os.PathLike) -> list[Source]:
    """The files of a local model folder that loading it reads (weights, configs, tokenizer,
    adapters; not its logs, loss history or provenance), sorted."""
    root = Path(folder)
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or f.name in BOOKKEEPING or f.suffix == ".log":
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        out.append(Source(str(Path(folder) / rel)))
    return out


def local_model(ref: str) -> list[Source]:
    """:func:`model_files` of ``ref`` when it is a local folder, else [] (a hub id: transformers
    loads it from the HF cache; its id is in the cell's config slice)."""
    return model_files(ref) if Path(ref).is_dir() else []


class DigestCache:
    """SHA-256 of files, remembered by (size, mtime_ns, inode) in a JSON file."""

    def __init__(self, path: str | os.PathLike | None = CACHE, readonly: bool = False):
        self.path = Path(path) if path else None
        self.readonly = readonly
        self._d: dict[str, list] = {}
        self._dirty = False
        if self.path and self.path.is_file():
            try:
                self._d = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                self._d = {}

    def file(self, path: str | os.PathLike) -> str:
        p = os.path.abspath(path)
        st = os.stat(p)
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self._d.get(p)
        if hit and hit[:3] == key:
            return hit[3]
        digest = sha256_file(p)
        self._d[p] = [*key, digest]
        self._dirty = True
        return digest

    def path_digest(self, path: str | os.PathLike, pattern: str = "*") -> str:
        """:func:`~workflow_scripts.core.provenance.sha256_path`, from the cache where it can."""
        return sha256_path(path, pattern, file_digest=self.file)

    def save(self) -> None:
        if not (self.path and self._dirty) or self.readonly:
            return
        try:
            write_text_atomic(self.path, json.dumps(self._d))
            self._dirty = False
        except OSError:  # a read-only checkout still plans, it only hashes again next time
            pass


_CACHES: dict[bool, DigestCache] = {}


def cache(readonly: bool = False) -> DigestCache:
    """This process's digest cache (``.snakemake/digests.json`` of the working directory).
    A job reads it ``readonly`` (an unchanged model is not hashed again) and never writes it
    (jobs run concurrently; the planning process owns the file)."""
    if readonly not in _CACHES:
        _CACHES[readonly] = DigestCache(readonly=readonly)
    return _CACHES[readonly]


def job_cache() -> DigestCache:
    """The digest cache of a job: :func:`cache` read-only."""
    return cache(readonly=True)


def folder_digest(folder: str | os.PathLike) -> str:
    """One digest of a model folder's :func:`model_files` (relative path and SHA-256 each)."""
    return sha256_path(folder, files=model_files(folder), file_digest=cache().file)


def digests(inputs) -> dict[str, str]:
    """path -> SHA-256 of every :class:`Source` in ``inputs`` (a dict of paths or lists)."""
    out = {}
    values = inputs.values() if isinstance(inputs, dict) else [inputs]
    for v in values:
        for p in v if isinstance(v, list | tuple) else [v]:
            if isinstance(p, Source) and Path(p).is_dir():
                out[str(p)] = folder_digest(p)
            elif isinstance(p, Source) and Path(p).exists():
                out[str(p)] = cache().file(p)
    cache().save()
    return dict(sorted(out.items()))
