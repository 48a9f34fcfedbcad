"""Provenance of every result: canonical cell config + hash, code version, environment, inputs,
and atomic parquet writes that carry all of it as key-value metadata."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata as _md
from pathlib import Path

PROVENANCE_KEY = "provenance"
TRACKED_PACKAGES = (
    "torch", "torchaudio", "transformers", "snakemake", "numpy", "pandas", "pyarrow", "peft",
    "safetensors", "espeakng-loader", "soundfile", "altair",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parents[2]


def canonical_json(obj) -> str:
    """Sorted-key, whitespace-free JSON: equal configs give byte-equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (first 16 hex digits)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike, pattern: str = "*", files=None,
                file_digest=sha256_file) -> str:  # fmt: skip
    """SHA-256 of a file, or of a directory's sorted (relative path, file hash) list of the
    files matching ``pattern`` at any depth (e.g. ``"*.safetensors"``: a model's weights, not
    its logs; :func:`folder_files`), or of the given ``files`` in it. ``file_digest`` hashes
    one file (a cache's lookup, see :mod:`workflow_scripts.core.sources`)."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for f in folder_files(p, pattern) if files is None else files:
        h.update(f"{Path(f).relative_to(p)}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def folder_files(folder: Path, pattern: str = "*") -> list[Path]:
    """A folder's files matching ``pattern`` at any depth, sorted; not Snakemake's
    ``.snakemake_timestamp`` (written into a directory output after its job)."""
    return sorted(
        x for x in Path(folder).rglob(pattern) if x.is_file() and x.name != ".snakemake_timestamp"
    )


def git_info(repo: str | os.PathLike = REPO_ROOT) -> dict:
    """Commit of HEAD and whether tracked files differ from it ("unknown" outside git)."""

    def run(*args):
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except Exception:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = "absent"
    return out


def device_info() -> dict:
    info = {"host": socket.gethostname(), "platform": platform.platform()}
    try:
        import torch

        info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(0)
        info.update(cudnn_flags())
        info["torch_threads"] = str(torch.get_num_threads())
    except ImportError:  # pragma: no cover
        info["device"] = "cpu"
    return info


def cudnn_flags() -> dict:
    """The torch.backends.cudnn / TF32 settings a result was computed with (recorded on CPU
    too, where they do not apply, so every result carries the same keys)."""
    import torch

    cudnn = torch.backends.cudnn
    return {
        "cudnn_enabled": str(cudnn.enabled),
        "cudnn_benchmark": str(cudnn.benchmark),
        "cudnn_deterministic": str(cudnn.deterministic),
        "cudnn_allow_tf32": str(cudnn.allow_tf32),
        "cudnn_version": str(cudnn.version() if cudnn.is_available() else None),
        "matmul_allow_tf32": str(torch.backends.cuda.matmul.allow_tf32),
    }


def job_info() -> dict:
    """The batch job a result came from: SLURM job id (empty outside SLURM) and the GPUs the
    job was given (CUDA_VISIBLE_DEVICES as set by the scheduler)."""
    return {
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def flat_inputs(inputs: dict | None) -> dict[str, str]:
    """Named inputs with list values flattened (``backbone`` -> ``backbone.0``, ...)."""
    out = {}
    for k, v in (inputs or {}).items():
        if isinstance(v, list | tuple):
            out.update({f"{k}.{i}": str(p) for i, p in enumerate(v)})
        else:
            out[k] = str(v)
    return dict(sorted(out.items()))


def collect(
    cell: dict,
    inputs: dict[str, str] | None = None,
    seed: int | None = None,
    rule: str = "",
    wildcards: dict | None = None,
    started: str | None = None,
    git: dict | None = None,
) -> dict:
    """Everything a result needs to be traced back: a flat dict of JSON-able values. Every
    input is recorded with its path and SHA-256; the code is the digests of the project
    modules this process loaded (:func:`workflow_scripts.core.code.record`, refreshed by
    :func:`write_parquet` when the result is written)."""
    from workflow_scripts.core import code
    from workflow_scripts.core.sources import job_cache

    flat = flat_inputs(inputs)
    return {
        "config_slice": canonical_json(cell),
        "slice_hash": config_hash(cell),
        **(git or git_info()),
        **code.record(),
        "packages": canonical_json(package_versions()),
        "inputs_sha256": canonical_json({k: job_cache().path_digest(v) for k, v in flat.items()}),
        "input_paths": canonical_json(flat),
        "seed": "" if seed is None else str(seed),
        **{k: str(v) for k, v in device_info().items()},
        **job_info(),
        "rule": rule,
        "wildcards": canonical_json(wildcards or {}),
        "start_time": started or now(),
        "end_time": now(),
        "argv": " ".join(sys.argv[:3]),
    }


def content_hash(df) -> str:
    """Hash of a table's values, stored with it so that hand edits are detectable.

    Computed on the Arrow form of the table (what the parquet file holds), so the frame read
    back from the file hashes like the one written: list cells (read back as numpy arrays),
    None/NaN/NA in string or nullable columns (read back as nulls) and dtypes that pandas
    changes on the round trip give the same hash."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    h = hashlib.sha256()
    h.update(canonical_json(list(map(str, table.column_names))).encode())
    for name in table.column_names:
        h.update(canonical_json(table.column(name).to_pylist()).encode())
    return h.hexdigest()[:16]


def write_parquet(df, path: str | os.PathLike, meta: dict) -> None:
    """Write ``df`` to ``path`` atomically (temp file in the same folder, then rename), with
    ``meta`` (plus the table's content hash) as parquet key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workflow_scripts.core import code

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**meta, "content_hash": content_hash(df)}
    if "code_modules" in meta:  # the modules loaded by now, when the result is written
        meta.update(code.record())
    kv = {**(table.schema.metadata or {})}
    kv.update({k.encode(): str(v).encode() for k, v in meta.items()})
    kv[PROVENANCE_KEY.encode()] = canonical_json(meta).encode()
    table = table.replace_schema_metadata(kv)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the provenance of an output that cannot carry it (a folder, a safetensors
    cache, a CSV or chart) is kept: ``<folder>/.provenance/<name>.json``."""
    p = Path(output)
    return p.parent / ".provenance" / f"{p.name}.json"


def write_sidecar(output: str | os.PathLike, meta: dict) -> None:
    """The provenance sidecar of ``output``: ``meta`` plus the output's own SHA-256 (so a
    hand edit shows), written atomically."""
    meta = {**meta, "output_sha256": sha256_path(output)}
    write_text_atomic(sidecar_path(output), json.dumps(meta, indent=1, sort_keys=True))


def read_provenance(path: str | os.PathLike) -> dict:
    """The provenance dict stored in a parquet written by :func:`write_parquet`."""
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    raw = md.get(PROVENANCE_KEY.encode())
    return json.loads(raw) if raw else {}


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
