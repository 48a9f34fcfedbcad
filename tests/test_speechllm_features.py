"""The SpeechLLM feature files: streamed writing, reading per utterance, atomicity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow_scripts.speechllm.features import Features, FeatureWriter, write_features


def utterances(n=5, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(k), dim, generator=g) for k in torch.randint(1, 9, (n,), generator=g)]


def test_written_utterances_read_back_one_by_one_and_as_safetensors(tmp_path):
    from safetensors.torch import load_file

    feats = utterances()
    path = tmp_path / "f.safetensors"
    assert write_features(path, iter(feats), {"encoder_layer": 5}) == 5
    back = Features(path)
    assert len(back) == 5 and back.dim == 6 and back.metadata["encoder_layer"] == "5"
    for a, b in zip(back, feats, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(back[-1], feats[-1], rtol=0, atol=0)
    assert [t.shape for t in back[1:4]] == [t.shape for t in feats[1:4]]
    for a, b in zip(back[1:4] + back[::2], feats[1:4] + feats[::2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # one read, or one per utterance
    with pytest.raises(IndexError):
        back[5]
    assert len(Features(path, limit=2)) == 2 and len(Features(path, limit=2)[0:9]) == 2
    plain = load_file(str(path))  # any safetensors reader opens it
    torch.testing.assert_close(plain["features"], torch.cat(feats), rtol=0, atol=0)
    assert plain["lengths"].tolist() == [len(f) for f in feats]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]


def test_empty_splits_and_frameless_utterances_read_back(tmp_path):
    assert write_features(tmp_path / "e.safetensors", []) == 0
    assert len(Features(tmp_path / "e.safetensors")) == 0
    write_features(tmp_path / "z.safetensors", [torch.zeros(0, 3), torch.ones(2, 3)])
    back = Features(tmp_path / "z.safetensors")
    assert back[0].shape == (0, 3) and back[1].tolist() == [[1.0] * 3] * 2


def test_a_failed_write_leaves_no_file_and_no_temporaries(tmp_path):
    path = tmp_path / "f.safetensors"

    def broken():
        yield torch.zeros(3, 4)
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_features(path, broken())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="expected"):
        with FeatureWriter(path) as w:
            w.add(np.zeros((3, 4)))
            w.add(np.zeros((3, 5)))
    assert list(tmp_path.iterdir()) == []
    w = FeatureWriter(path)
    w.add(np.zeros((2, 4)))
    assert w.close() == 1
    w.abort()  # after close: nothing to undo, the file stays
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]


def test_reading_an_utterance_reads_only_its_frames(tmp_path, monkeypatch):
    import os

    feats = utterances(n=40, dim=16)
    path = tmp_path / "f.safetensors"
    write_features(path, feats)
    sizes = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: sizes.append(len(bufs[0])) or
                        real(fd, bufs, off))  # fmt: skip
    Features(path)[7]
    assert sizes[-1] == feats[7].numel() * 4  # one utterance's bytes, not the file's


def test_split_features_stream_to_the_same_values_as_encoding_in_memory(tmp_path):
    from helpers import TINY
    from test_speechllm import TEXT_CFG, tiny_speechllm

    from workflow_scripts.backbones.registry import normalize_audio
    from workflow_scripts.core.config import validate_config
    from workflow_scripts.speechllm.model import load_encoder, save_speechllm
    from workflow_scripts.speechllm.run import read_features
    from workflow_scripts.speechllm.run import write_features as write_split
    from workflow_scripts.speechllm.speech import read_audio, read_manifest, synthesize_split

    model, enc_src, dec_src = tiny_speechllm(tmp_path)
    save_speechllm(model, tmp_path / "sllm", enc_src, dec_src)
    corpus = validate_config({"corpus": TINY["corpus"]})["corpus"]
    synthesize_split(tmp_path / "sp", "testing", 4, corpus, TEXT_CFG, 0, augment=False)
    out = tmp_path / "f.safetensors"
    assert write_split(str(tmp_path / "sllm"), str(tmp_path / "sp"), str(out)) == 4
    enc = load_encoder(enc_src)
    audio = read_audio(tmp_path / "sp", read_manifest(tmp_path / "sp"))
    with torch.no_grad():  # the hidden state, straight from the encoder
        ref = [enc(normalize_audio(torch.as_tensor(a)[None]), output_hidden_states=True)
               .hidden_states[model.encoder_layer][0] for a in audio]  # fmt: skip
    for a, b in zip(read_features(str(out)), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
