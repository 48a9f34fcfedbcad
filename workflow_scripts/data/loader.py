"""One loader for the Speech Commands v0.02 layout: the real data set or the synthetic corpus.

Bad audio never crashes a job: unreadable and empty files are skipped, wrong sample rates are
resampled, multi-channel audio is down-mixed, and every clip is padded/cropped to 1 s. Each
such event is recorded per file in the manifest (``status``) and counted in a summary.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workflow_scripts.core.provenance import sha256_file
from workflow_scripts.data.corpus import CLIP_SAMPLES, SAMPLE_RATE, SPEECH_COMMANDS_WORDS

SPLITS = ("training", "validation", "testing")
MANIFEST_COLUMNS = (
    "path", "label", "label_idx", "speaker", "split", "duration", "sample_rate", "channels",
    "sha256", "status", "usable",
)  # fmt: skip


@dataclass
class LoadedClip:
    """A clip as the models see it, plus what had to be done to it."""

    audio: np.ndarray | None  # float32 (CLIP_SAMPLES,) or None when unusable
    sample_rate: int = 0
    channels: int = 0
    duration: float = 0.0
    flags: list[str] = field(default_factory=list)  # resampled, downmixed, padded, cropped

    @property
    def status(self) -> str:
        if self.audio is None:
            return self.flags[0] if self.flags else "unreadable"
        return "+".join(self.flags) if self.flags else "ok"


def fit_length(x: np.ndarray, n: int = CLIP_SAMPLES) -> tuple[np.ndarray, str | None]:
    """Zero-pad at the end or centre-crop to ``n`` samples; returns (clip, flag)."""
    if x.shape[0] == n:
        return x, None
    if x.shape[0] < n:
        return np.pad(x, (0, n - x.shape[0])), "padded"
    start = (x.shape[0] - n) // 2
    return x[start : start + n], "cropped"


def load_clip(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> LoadedClip:
    """Read one file with soundfile; never raises for bad audio (see module docstring)."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/ValueError
        return LoadedClip(None, flags=[f"unreadable: {type(exc).__name__}"])
    channels = int(data.shape[1]) if data.ndim == 2 else 1
    if data.shape[0] == 0:
        return LoadedClip(None, sr, channels, 0.0, ["empty"])
    if not np.all(np.isfinite(data)):
        return LoadedClip(None, sr, channels, data.shape[0] / sr, ["non-finite samples"])
    flags = []
    x = data.mean(axis=1) if channels > 1 else data[:, 0]
    if channels > 1:
        flags.append("downmixed")
    duration = data.shape[0] / sr
    if sr != target_sr:
        import torch
        import torchaudio.functional as AF

        x = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), sr, target_sr).numpy()
        flags.append("resampled")
    x, flag = fit_length(x.astype(np.float32), CLIP_SAMPLES)
    if flag:
        flags.append(flag)
    return LoadedClip(x, sr, channels, duration, flags)


def _read_list(root: Path, name: str) -> set[str]:
    p = root / name
    if not p.is_file():
        return set()
    return {line.strip() for line in p.read_text().splitlines() if line.strip()}


def scan_speech_commands(root: str | os.PathLike, words=SPEECH_COMMANDS_WORDS) -> list[dict]:
    """List the clips of a Speech Commands v0.02 directory: path (relative), label, speaker,
    split. Folders starting with ``_`` (``_background_noise_``) and words not in ``words`` are
    skipped, so the real data set's ``_silence_``-free 35-word task is what is read."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a directory")
    val, test = _read_list(root, "validation_list.txt"), _read_list(root, "testing_list.txt")
    if not any((root / n).is_file() for n in ("validation_list.txt", "testing_list.txt")):
        raise FileNotFoundError(
            f"{root} has no validation_list.txt / testing_list.txt: not a Speech Commands layout"
        )
    rows = []
    for label_idx, word in enumerate(words):
        wdir = root / word
        if not wdir.is_dir():
            continue
        for f in sorted(wdir.iterdir()):
            if f.suffix.lower() != ".wav":
                continue
            rel = f"{word}/{f.name}"
            split = "validation" if rel in val else "testing" if rel in test else "training"
            speaker = f.name.split("_nohash_")[0]
            rows.append(
                {"path": rel, "label": word, "label_idx": label_idx, "speaker": speaker,
                 "split": split}
            )  # fmt: skip
    if not rows:
        raise FileNotFoundError(f"{root} holds no .wav file under any of the {len(words)} words")
    return rows


def build_manifest(root: str | os.PathLike, words=SPEECH_COMMANDS_WORDS, progress: bool = True):
    """Scan, read and check every clip; returns (manifest DataFrame, summary dict)."""
    import pandas as pd
    from tqdm import tqdm

    root = Path(root)
    rows = scan_speech_commands(root, words)
    for r in tqdm(rows, desc="checking clips", disable=not progress, mininterval=5):
        clip = load_clip(root / r["path"])
        r.update(
            duration=clip.duration, sample_rate=clip.sample_rate, channels=clip.channels,
            sha256=sha256_file(root / r["path"]), status=clip.status,
            usable=clip.audio is not None,
        )  # fmt: skip
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return df, summarize_manifest(df)


def manifest_digest(df) -> str:
    """One SHA-256 for a whole data set: over the sorted (path, file sha256) pairs."""
    h = hashlib.sha256()
    for path, digest in sorted(zip(df.path, df.sha256, strict=True)):
        h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()


def summarize_manifest(df) -> dict:
    """Counts per split, unusable files and each kind of repair. ``speakers_shared_across_splits``
    is the number of speakers (the manifest's ``speaker``: Speech Commands' speaker hash, a
    session of the synthetic corpus) heard in more than one split, every pair of splits
    counted (training-validation, training-testing and validation-testing); 0 for a clean
    split."""
    out = {f"{s}_usable": int(((df.split == s) & df.usable).sum()) for s in SPLITS}
    out["files"] = len(df)
    out["unusable"] = int((~df.usable).sum())
    for flag in ("resampled", "downmixed", "padded", "cropped", "empty", "unreadable"):
        out[flag] = int(df.status.str.contains(flag, regex=False).sum())
    out["speakers"] = int(df.speaker.nunique())
    splits_of_speaker = df.groupby("speaker").split.nunique()
    out["speakers_shared_across_splits"] = int((splits_of_speaker > 1).sum())
    return out


def split_rows(manifest, split: str, limit: int | None = None):
    """The manifest rows of one split's usable clips, in the order every stage reads them: a
    fixed, seed-free shuffle (by SHA-256 of the path), so the first ``k`` rows of the whole
    split are the ``k``-clip subset (``limit``), and consecutive rows (a similarity batch, the
    first clips of a cache) mix words and speakers rather than following the manifest's
    word-sorted order. Stratification is not attempted."""
    sub = manifest[(manifest.split == split) & manifest.usable]
    order = np.asarray(sub.path.map(lambda p: hashlib.sha256(p.encode()).hexdigest()).argsort())
    return sub.iloc[order if limit is None else order[:limit]]


def read_clips(root: str | os.PathLike, paths) -> np.ndarray:
    """float32 (len(paths), 16000) clips; a clip that became unreadable since the manifest was
    made is an error (the manifest must be rebuilt), not a silent gap."""
    root = Path(root)
    audio = np.zeros((len(paths), CLIP_SAMPLES), dtype=np.float32)
    for i, p in enumerate(paths):
        clip = load_clip(root / p)
        if clip.audio is None:
            raise ValueError(
                f"{root / p} is {clip.status} but the manifest lists it as usable: it changed "
                "on disk since the manifest was made; rerun the manifest job"
            )
        audio[i] = clip.audio
    return audio


def iter_batches(root: str | os.PathLike, rows, batch_size: int):
    """(audio (b, 16000) float32, labels (b,) int64, paths) of ``rows`` (from
    :func:`split_rows`), ``batch_size`` clips at a time: a split streamed from disk."""
    paths, labels = list(rows.path), rows.label_idx.to_numpy(np.int64)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        yield read_clips(root, chunk), labels[start : start + len(chunk)], chunk


def load_split(root: str | os.PathLike, manifest, split: str, limit: int | None = None):
    """All usable clips of one split in memory, as (float32 array (N, 16000), int64 labels,
    paths), in :func:`split_rows` order. For small sets; jobs over a whole split stream it
    with :func:`iter_batches`."""
    sub = split_rows(manifest, split, limit)
    return read_clips(root, list(sub.path)), sub.label_idx.to_numpy(np.int64), list(sub.path)
