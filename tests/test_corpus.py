"""The synthetic corpus: layout, split rule, determinism, and audibly distinct speakers."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from workflow_scripts.data import corpus as C


def test_layout_matches_speech_commands(tiny_corpus):
    root, cfg, summary = tiny_corpus
    assert summary["clips"] == cfg["speakers"] * len(cfg["words"]) * cfg["repeats"]
    speakers = {C.speaker_id(cfg["seed"], i) for i in range(cfg["speakers"])}
    for word in cfg["words"]:
        files = sorted((root / word).glob("*.wav"))
        assert len(files) == cfg["speakers"] * cfg["repeats"]
        seen = set()
        for f in files:
            spk, rest = f.stem.split("_nohash_")
            assert len(spk) == 8 and spk in speakers
            assert int(rest) in range(cfg["repeats"])
            seen.add(spk)
        assert seen == speakers  # every speaker says every word
    assert (root / "validation_list.txt").is_file() and (root / "testing_list.txt").is_file()
    assert list((root / "_background_noise_").glob("*.wav"))
    info = sf.info(root / cfg["words"][0] / files[0].name)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        16000, 1, 16000, "PCM_16"
    )  # fmt: skip


def test_splits_are_speaker_disjoint_and_follow_the_hash_rule(tiny_corpus):
    root, cfg, _ = tiny_corpus
    val = (root / "validation_list.txt").read_text().split()
    test = (root / "testing_list.txt").read_text().split()
    speakers = lambda paths: {p.split("/")[1].split("_nohash_")[0] for p in paths}  # noqa: E731
    all_paths = [f"{w}/{f.name}" for w in cfg["words"] for f in (root / w).glob("*.wav")]
    train = sorted(set(all_paths) - set(val) - set(test))
    assert val and test and train
    assert not speakers(val) & speakers(test)
    assert not speakers(train) & (speakers(val) | speakers(test))
    for spk in speakers(val):
        assert C.which_set(spk, 25, 25) == "validation"
    for spk in speakers(test):
        assert C.which_set(spk, 25, 25) == "testing"
    # every recording of a validation speaker is listed, for every word
    assert len(val) == len(speakers(val)) * len(cfg["words"]) * cfg["repeats"]


def test_which_set_is_stable_and_roughly_proportional():
    ids = [C.speaker_id(0, i) for i in range(4000)]
    sets = [C.which_set(s, 10, 10) for s in ids]
    assert sets == [C.which_set(s, 10, 10) for s in ids]
    frac_val = sets.count("validation") / len(sets)
    frac_test = sets.count("testing") / len(sets)
    assert 0.08 < frac_val < 0.12 and 0.08 < frac_test < 0.12


def test_synthesis_is_deterministic_per_process(tmp_path, tiny_corpus):
    """espeak-ng keeps internal state (its pitch-flutter phase) across calls, so a clip depends
    on what the process synthesised before it: the corpus is a pure function of its config
    when made in a fresh process, as the rule does. Check two fresh processes agree."""
    import subprocess
    import sys

    _, cfg, _ = tiny_corpus
    small = {**cfg, "speakers": 3, "words": ["yes", "no"]}
    code = (
        "import json, sys; from workflow_scripts.data.corpus import synthesize_corpus; "
        "synthesize_corpus(sys.argv[1], json.loads(sys.argv[2]), progress=False)"
    )
    import json

    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / name), json.dumps(small)], check=True
        )
    files = sorted((tmp_path / "a").rglob("*.wav"))
    assert len(files) == 3 * 2 * cfg["repeats"] + 2
    for f in files:
        rel = f.relative_to(tmp_path / "a")
        assert f.read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for name in ("validation_list.txt", "testing_list.txt"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_rejected_voice_fails_loudly():
    from workflow_scripts.data.espeak import engine

    with pytest.raises(ValueError, match="en-gb"):
        C.check_voices(engine(), ["en-us", "en-gb"], [""])
    with pytest.raises(ValueError, match="nosuchvariant"):
        C.check_voices(engine(), ["en-us"], ["nosuchvariant"])
    # variants whose audio differs between processes are refused (not reproducible)
    with pytest.raises(ValueError, match=r"\['f2'\] give different audio"):
        C.check_voices(engine(), ["en-us"], ["", "f2", "m3"])
    from workflow_scripts.core.config import validate_config

    defaults = validate_config({})["corpus"]["variants"]
    assert "f1" in defaults and not set(defaults) & set(C.NONDETERMINISTIC_VARIANTS)
    # ... and by config validation, before any job runs, naming the key
    from workflow_scripts.core.config import ConfigError
    from workflow_scripts.grid import validate

    with pytest.raises(ConfigError, match=r"config\.corpus\.variants: \['f3'\] give different"):
        validate({"corpus": {"variants": ["", "f3"]}})


def _avg_logmel(path) -> np.ndarray:
    """Time-averaged log-mel spectrum over the frames that carry speech."""
    import torch
    import torchaudio.transforms as T

    x, sr = sf.read(path, dtype="float32")
    mel = T.MelSpectrogram(sample_rate=sr, n_fft=400, hop_length=160, n_mels=40)
    m = mel(torch.from_numpy(x)).clamp_min(1e-10)
    energy = m.sum(0)
    speech = energy > 0.1 * energy.max()
    return torch.log(m[:, speech]).mean(1).numpy()


def test_different_speakers_differ_more_than_same_speaker_repeats(tiny_corpus):
    root, cfg, _ = tiny_corpus
    speakers = sorted({f.name.split("_nohash_")[0] for f in (root / "yes").glob("*.wav")})
    within, across = [], []
    for word in cfg["words"]:
        feats = {
            s: [_avg_logmel(root / word / f"{s}_nohash_{r}.wav") for r in range(cfg["repeats"])]
            for s in speakers
        }
        for i, s in enumerate(speakers):
            within.append(np.linalg.norm(feats[s][0] - feats[s][1]))
            for t in speakers[i + 1 :]:
                across.append(np.linalg.norm(feats[s][0] - feats[t][0]))
    assert np.mean(across) > 1.5 * np.mean(within), (np.mean(across), np.mean(within))


def test_place_in_window_pads_and_crops():
    rng = np.random.default_rng(0)
    short = np.ones(1000, dtype=np.float32)
    out = C.place_in_window(short, rng)
    assert out.shape == (16000,) and out.sum() == pytest.approx(1000)
    long = np.linspace(0.1, 1, 20000, dtype=np.float32)
    out = C.place_in_window(long, rng)
    assert out.shape == (16000,) and out[0] == pytest.approx(long[2000])
