"""Sizes known before a run: clips per split, a model's depth / width / frames, and the bytes
of the outputs that dominate disk (hidden-state caches, model folders).

The rules' ``disk_mb`` and ``mem_mb`` requests and ``make plan``'s table are computed from
these functions, so the plan a user reads is what the scheduler is asked for. Torch-free.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

MB = 1_000_000
# Speech Commands v0.02, the 35 words (no _silence_): clips per split of the official lists.
SPEECH_COMMANDS_CLIPS = {"training": 84_843, "validation": 9_981, "testing": 11_005}
CLIP_SAMPLES = 16_000


def split_clips(config: dict, split: str, manifest: str | Path | None = None) -> int:
    """Usable clips of ``split`` in the config's data: :func:`clip_counts` (the manifest of
    the same data, a listing of ``data.root``, Speech Commands' official counts or the
    synthetic corpus's expected size)."""
    return clip_counts(config, manifest)[0][split]


def clip_counts(config: dict, manifest: str | Path | None = None) -> tuple[dict[str, int], str]:
    """({split: clips}, which source they come from) for the data ``config`` reads, from the
    first that applies:

    1. ``manifest`` (``results/data/manifest.parquet``) when it was made from this data: its
       recorded ``config_slice`` names the same root and words (and, for the synthetic corpus,
       the corpus folder's ``provenance.json`` records this config's ``corpus``) - a manifest
       of another corpus (the synthetic one in a clone that ran ``make run``) is not counted;
    2. a listing of the root, split as the loader splits (``data.loader.scan_speech_commands``:
       the ``validation_list.txt`` / ``testing_list.txt`` rule; wav files, not checked);
    3. ``data.root`` set but absent here: Speech Commands v0.02's official split sizes, scaled
       by the share of the 35 words;
    4. the synthetic corpus's expected size (sessions x words x repeats x the split's share).

    Relative paths are relative to the workflow's directory (the folder above ``results/``);
    results are cached per process (a dry run asks once per job)."""
    from workflow_scripts.data.plan import data_root, words

    workdir, results = _workdir(manifest)
    root = _absolute(data_root(config, results), workdir)
    word_list = tuple(words(config))
    synthetic = not config.get("data", {}).get("root")
    same_corpus = not synthetic or _corpus_matches(root, config.get("corpus") or {})
    if manifest is not None and same_corpus:
        got = _manifest_counts(Path(manifest), workdir, root, config["corpus"].get("words"))
        if got is not None:
            return dict(got), f"the manifest {manifest} (made from {root})"
    if same_corpus and Path(root).is_dir():
        got = _listing_counts(root, word_list)
        if got is not None:
            return dict(got), f"a listing of {root} (wav files per split, not checked)"
    if not synthetic:
        share = len(word_list) / 35
        counts = {s: int(round(n * share)) for s, n in SPEECH_COMMANDS_CLIPS.items()}
        return counts, (f"Speech Commands v0.02's official split sizes ({len(word_list)} of "
                        f"35 words; data.root {root} is not on this host)")  # fmt: skip
    c = config["corpus"]
    counts = {}
    for split in SPEECH_COMMANDS_CLIPS:
        pct = {"validation": c["validation_percentage"], "testing": c["testing_percentage"]}
        share = pct.get(split, 100 - c["validation_percentage"] - c["testing_percentage"]) / 100
        counts[split] = int(round(c["speakers"] * len(word_list) * c.get("repeats", 1) * share))
    return counts, "the synthetic corpus's expected size (config `corpus`; not made yet)"


def _workdir(manifest) -> tuple[Path, str]:
    """The workflow's directory and results folder of a manifest path (``<results>/data/
    manifest.parquet``); the current directory and ``results`` without one."""
    from workflow_scripts.core import paths

    if manifest is None:
        return Path.cwd(), paths.RESULTS
    depth = len(Path(paths.FILES["manifest"]).parts)
    results = Path(manifest).parents[depth - 1]
    return Path(_absolute(results, Path.cwd())).parent, str(results)


def _absolute(path, base: Path) -> str:
    p = Path(path)
    return os.path.normpath(p if p.is_absolute() else base / p)


def _slice_of(metadata: dict | None) -> dict | None:
    """The ``config_slice`` a result's provenance records (flat key, or inside the JSON)."""
    import json

    md = metadata or {}
    raw = md.get(b"config_slice") or md.get("config_slice")
    if raw is None:
        prov = md.get(b"provenance") or md.get("provenance")
        raw = json.loads(prov).get("config_slice") if prov else None
    if raw is None:
        return None
    return json.loads(raw) if isinstance(raw, (str, bytes)) else raw


def _corpus_matches(root: str, corpus: dict) -> bool:
    """Whether the synthetic corpus at ``root`` was made from ``corpus`` (its
    ``provenance.json``); False when it is absent or records other settings."""
    import json

    prov = Path(root) / "provenance.json"
    try:
        recorded = _slice_of(json.loads(prov.read_text()))
    except (OSError, ValueError):
        return False
    return recorded == json.loads(json.dumps(corpus))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _manifest_counts(manifest: Path, workdir: Path, root: str, words) -> tuple | None:
    stamp = _stamp(manifest)
    if stamp is None:
        return None
    return _read_manifest(str(manifest), stamp, str(workdir), root, tuple(words or ()))


@functools.lru_cache(maxsize=16)
def _read_manifest(manifest: str, _stamp, workdir: str, root: str, words: tuple) -> tuple | None:
    """Usable clips per split of a manifest made from ``root`` with ``words`` (() = all 35),
    else None."""
    import pyarrow.parquet as pq

    try:
        recorded = _slice_of(pq.read_schema(manifest).metadata) or {}
    except (OSError, ValueError):
        return None
    if "root" not in recorded or _absolute(recorded["root"], Path(workdir)) != root:
        return None
    if tuple(recorded.get("words") or ()) != words:
        return None
    t = pq.read_table(manifest, columns=["split", "usable"]).to_pandas()
    return tuple((s, int(((t.split == s) & t.usable).sum())) for s in SPEECH_COMMANDS_CLIPS)


def _listing_counts(root: str, words: tuple) -> tuple | None:
    stamps = tuple(_stamp(Path(root) / f) for f in ("validation_list.txt", "testing_list.txt"))
    return _list_root(root, words, stamps)


@functools.lru_cache(maxsize=16)
def _list_root(root: str, words: tuple, _stamps) -> tuple | None:
    """Clips per split of a Speech Commands folder as the loader splits it; None when it is
    not one (no split lists, no wav file)."""
    from workflow_scripts.data.loader import scan_speech_commands

    try:
        rows = scan_speech_commands(root, list(words))
    except (OSError, ValueError):
        return None
    counts = dict.fromkeys(SPEECH_COMMANDS_CLIPS, 0)
    for r in rows:
        counts[r["split"]] += 1
    return tuple(counts.items())


def limited(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, int(limit))


def conv_frames(conv_kernel, conv_stride, samples: int = CLIP_SAMPLES) -> int:
    """Frames the convolutional front end makes of ``samples`` samples."""
    t = samples
    for k, s in zip(conv_kernel, conv_stride, strict=True):
        t = (t - k) // s + 1
    return int(t)


def model_dims(spec: dict) -> dict:
    """{layers, hidden, frames, params} of a model registry entry, from its architecture as
    far as it can be known without loading it (config.json, pretrain spec, the hub
    architectures table, else a base-sized wav2vec2)."""
    from workflow_scripts.core import resources
    from workflow_scripts.core.config import model_config

    cfg = model_config(spec) or {}
    if not cfg and "hf" in spec:
        arch = resources.hub_architectures().get(str(spec["hf"]))
        cfg = dict(arch["config"]) if arch else {}
    small = "pretrain" in spec
    conv = resources.SMALL_CONV if small else resources.REAL_CONV
    kernel = cfg.get("conv_kernel") or conv["conv_kernel"]
    stride = cfg.get("conv_stride") or conv.get("conv_stride", (5, 2, 2, 2, 2, 2, 2))
    return {
        "layers": int(cfg.get("num_hidden_layers") or 12),
        "hidden": int(cfg.get("hidden_size") or 768),
        "frames": conv_frames(kernel, stride),
        "params": resources.estimate_params(spec),
    }


def cache_bytes(clips: int, frames: int, hidden: int, states: int, feature_projection: bool,
                final: bool) -> int:  # fmt: skip
    """Bytes of a cache file: float16 rows of ``frames x hidden`` per stored state (and the
    feature projection / the pre-LN ``final`` output), int64 labels, the header (paths)."""
    per_row = 2 * frames * hidden
    n_tensors = states + int(feature_projection) + int(final)
    return clips * (per_row * n_tensors + 8) + 40 * clips + 1500  # + header: paths, provenance


def model_bytes(params: int, dtype_bytes: int = 4) -> int:
    """A ``save_pretrained`` folder of ``params`` parameters (safetensors, float32)."""
    return params * dtype_bytes + 100_000


def mb(n_bytes: float) -> int:
    return int(math.ceil(n_bytes / MB))
