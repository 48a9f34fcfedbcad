"""The Speech Commands loader: manifest, repairs of odd audio, skipping of bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from workflow_scripts.data import loader as D


@pytest.fixture
def broken_corpus(tiny_corpus, tmp_path):
    """A copy of the tiny corpus with deliberately bad files added to the training split."""
    root, cfg, _ = tiny_corpus
    dst = tmp_path / "sc"
    shutil.copytree(root, dst)
    yes = dst / "yes"
    rng = np.random.default_rng(0)
    good = yes / sorted(p.name for p in yes.glob("*.wav"))[0]
    data = good.read_bytes()
    (yes / "trunc0001_nohash_0.wav").write_bytes(data[: len(data) // 3])  # truncated
    sf.write(yes / "stereo08_nohash_0.wav", rng.uniform(-0.5, 0.5, (4000, 2)), 8000)  # 0.5 s
    (yes / "zerolen0_nohash_0.wav").write_bytes(b"")  # zero-length file
    sf.write(yes / "noframes_nohash_0.wav", np.zeros((0, 1)), 16000)  # valid header, no data
    (yes / "garbage0_nohash_0.wav").write_bytes(b"this is not audio at all" * 10)
    sf.write(yes / "longclip_nohash_0.wav", rng.uniform(-0.1, 0.1, 24000), 16000)
    return dst, cfg


def test_manifest_of_clean_corpus(tiny_corpus):
    root, cfg, summary = tiny_corpus
    df, s = D.build_manifest(root, cfg["words"], progress=False)
    assert list(df.columns) == list(D.MANIFEST_COLUMNS)
    assert len(df) == summary["clips"] and df.usable.all() and (df.status == "ok").all()
    assert s["speakers_shared_across_splits"] == 0
    assert s["validation_usable"] == summary["validation_clips"]
    assert s["testing_usable"] == summary["testing_clips"]
    assert df.sha256.str.len().eq(64).all() and df.duration.eq(1.0).all()
    assert sorted(df.label.unique()) == sorted(cfg["words"])
    assert (df.label_idx == df.label.map(cfg["words"].index)).all()


def test_bad_files_are_repaired_or_skipped_and_counted(broken_corpus):
    root, cfg = broken_corpus
    df, s = D.build_manifest(root, cfg["words"], progress=False)
    st = df.set_index(df.path.str.split("/").str[1].str.split("_nohash_").str[0]).status
    assert st["stereo08"] == "downmixed+resampled+padded"
    assert st["longclip"] == "cropped"
    assert st["zerolen0"].startswith("unreadable")
    assert st["garbage0"].startswith("unreadable")
    assert st["noframes"] == "empty"
    assert st["trunc0001"] in ("padded",) or st["trunc0001"].startswith("unreadable")
    assert s["downmixed"] == 1 and s["resampled"] == 1 and s["cropped"] == 1
    assert s["unusable"] == 3 + (not st["trunc0001"] == "padded")
    assert s["empty"] == 1 and s["unreadable"] >= 2
    audio, labels, paths = D.load_split(root, df, "training")
    assert audio.shape[1] == 16000 and audio.dtype == np.float32
    assert len(audio) == len(labels) == len(paths) == s["training_usable"]
    assert not any("zerolen0" in p or "garbage0" in p for p in paths)
    assert np.isfinite(audio).all()


def test_load_clip_never_raises(tmp_path):
    missing = D.load_clip(tmp_path / "nope.wav")
    assert missing.audio is None and missing.status.startswith("unreadable")
    sf.write(tmp_path / "a.wav", np.full(16000, np.nan, dtype=np.float32), 16000, "FLOAT")
    assert D.load_clip(tmp_path / "a.wav").audio is None


def test_resampled_clip_keeps_its_pitch(tmp_path):
    t = np.arange(22050) / 22050
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 22050)
    clip = D.load_clip(tmp_path / "tone.wav")
    spec = np.abs(np.fft.rfft(clip.audio))
    assert abs(np.argmax(spec) * 16000 / 16000 - 440) <= 2  # 1-Hz bins over 16000 samples
    assert clip.status == "resampled"


def test_not_a_speech_commands_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Speech Commands layout"):
        D.scan_speech_commands(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        D.scan_speech_commands(tmp_path / "missing")


def test_load_split_limit_is_deterministic(tiny_corpus):
    root, cfg, _ = tiny_corpus
    df, _ = D.build_manifest(root, cfg["words"], progress=False)
    a = D.load_split(root, df, "training", limit=5)
    b = D.load_split(root, df, "training", limit=5)
    assert a[2] == b[2] and len(a[2]) == 5
    np.testing.assert_array_equal(a[0], b[0])


def test_split_rows_are_one_fixed_shuffle_whose_prefixes_are_the_limited_subsets():
    """The whole split and every ``limit`` come from one order: the k-clip subset is the
    first k rows of the whole split (so the first rows of a full cache are the smaller cache),
    and that order is not the manifest's word-sorted one (a batch of consecutive rows mixes
    words)."""
    import pandas as pd

    words = ["a", "b", "c", "d"]
    labels = [w for w in words for _ in range(50)]
    paths = [f"{w}/s{i % 50:03d}_nohash_0.wav" for i, w in enumerate(labels)]
    manifest = pd.DataFrame({"path": paths, "split": "training", "usable": True, "label": labels})
    manifest.loc[manifest.index % 7 == 0, "usable"] = False
    whole = D.split_rows(manifest, "training")
    assert len(whole) == manifest.usable.sum() and whole.usable.all()
    for k in (1, 10, 57, len(whole), len(whole) + 5):
        assert list(D.split_rows(manifest, "training", k).path) == list(whole.path[:k])
    assert whole.label.iloc[:20].nunique() == 4  # the first 20 rows mix all four words
    assert list(whole.path) != sorted(whole.path)
