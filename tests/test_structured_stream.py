"""The structured cell streams (issue #15) and is consistent for pre-LN models (issue #16):
training reads one random mini-batch of the training cache per step (the same draws as on
arrays), test clips are read one evaluation batch at a time, and the gated student reproduces
the cached teacher states it is distilled to, the last one included, for post- and pre-LN
models (both sides before the encoder's final LayerNorm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_structured import ALL_GATES, rule_files, tiny_model

from workflow_scripts.backbones.cache import extract_hidden_states
from workflow_scripts.backbones.cachefile import CacheFile, write_cache
from workflow_scripts.data import loader
from workflow_scripts.structured.plan import default_distill_layers
from workflow_scripts.structured.run import run_cell, training_views
from workflow_scripts.structured.stack import GatedStack
from workflow_scripts.structured.train import train_gates

L = 3


def training_cache(tmp_path, arch: str, stable: bool, n: int = 6):
    """(model, cache path) of a tiny float32 model and a training cache written from random
    clips, storing state 0 and the default distilled states (L included)."""
    model = tiny_model(arch, stable, dtype=torch.float32)
    audio = np.random.default_rng(0).standard_normal((n, 8000)).astype(np.float32)
    arrays = extract_hidden_states(model, audio, torch.device("cpu"), progress=False)
    states = [0, *default_distill_layers(L)]
    arrays["hidden_states"] = arrays["hidden_states"][states]
    if not stable:
        del arrays["final"]  # stored only where it differs from state L
    write_cache(tmp_path / "train.safetensors", arrays, np.zeros(n, dtype=np.int64),
                [f"c{i}" for i in range(n)], meta={"n_layers": L}, states=states)  # fmt: skip
    return model, tmp_path / "train.safetensors"


@pytest.mark.parametrize("arch, stable", [("hubert", False), ("hubert", True), ("wavlm", True)])
def test_gates_at_one_reproduce_the_cached_targets(tmp_path, arch, stable):
    model, path = training_cache(tmp_path, arch, stable)
    x0, teacher = training_views(str(path), default_distill_layers(L), None)
    assert sorted(teacher) == [1, 2, 3]
    stack = GatedStack.from_model(model, gates=ALL_GATES, init_log_alpha=60.0)
    rows = np.arange(len(x0))
    x = torch.from_numpy(x0[rows].astype(np.float32))
    with torch.no_grad():
        for mode in ("sample", "ones"):  # sampled gates are all exactly 1 at log-alpha 60
            if mode == "sample":
                assert all(bool((g.sample() == 1).all()) for m in stack.gates for g in m.values())
            out = stack(x, layers=sorted(teacher), mode=mode)
            for i, t in teacher.items():  # float16 rounding of the cache
                torch.testing.assert_close(out[i], torch.from_numpy(t[rows].astype(np.float32)),
                                           rtol=0, atol=0.02)  # fmt: skip
    if stable:  # the cache's "final" (after the final LayerNorm) is another quantity
        final = CacheFile(path).read_state("final").astype(np.float32)
        assert np.abs(out[L].numpy() - final).max() > 0.5


def test_training_from_the_cache_reads_one_batch_per_step(tmp_path, monkeypatch):
    """The same random draws as on arrays (bit-identical history), and no read larger than a
    mini-batch."""
    model, path = training_cache(tmp_path, "hubert", False, n=10)
    layers = default_distill_layers(L)
    x0, teacher = training_views(str(path), layers, 8)
    arrays = (x0[:], {i: t[:] for i, t in teacher.items()})
    sizes = []
    read_state = CacheFile.read_state

    def spy(self, state, rows=None):
        sizes.append(len(rows))
        return read_state(self, state, rows)

    monkeypatch.setattr(CacheFile, "read_state", spy)
    hist = []
    for data in ((x0, teacher), arrays):
        torch.manual_seed(0)  # the gates' initial log-alphas
        stack = GatedStack.from_model(model, gates={"heads": True, "ffn_units": True})
        hist.append(train_gates(stack, *data, 0.3, steps=5, batch_size=3, seed=1))
    assert hist[0] == hist[1]
    assert sizes == [3] * 5 * (1 + len(layers))  # per step: state 0 and each teacher


def test_run_cell_reads_test_clips_one_batch_at_a_time(tmp_path, monkeypatch):
    model = tiny_model("hubert", True, dtype=torch.float32)  # pre-LN end to end
    inputs = rule_files(tmp_path, model)
    reads = []
    read_clips = loader.read_clips

    def spy(root, paths):
        reads.append(list(paths))
        return read_clips(root, paths)

    monkeypatch.setattr(loader, "read_clips", spy)
    cell = {"target": 0.4, "gates": {"heads": True, "ffn_units": True}, "init_log_alpha": 3.0,
            "straight_through": False, "steps": 2, "batch_size": 2, "lr": 2e-4, "gate_lr": 0.05,
            "lambda_lr": 0.5, "warmup_frac": 0.3, "seed": 0,
            "distill": {"layers": None, "loss": "l1", "cos_weight": 1.0},
            "train_clips": None, "test_clips": 5, "eval_batch_size": 2,
            "latency": {"batch_size": 3, "warmup": 0, "repeats": 1},
            "finetune": {"steps": 0}}  # fmt: skip
    df, _ = run_cell(inputs, cell, str(tmp_path / "corpus"), model="tiny",
                     out_dir=tmp_path / "p", log=lambda _m: None)  # fmt: skip
    row = df.iloc[0]
    assert (
        row.n_utterances == 5 and row.n_train_clips == 6 and list(row.distill_layers) == [1, 2, 3]
    )
    assert reads and max(map(len, reads)) <= 2
    assert all(p.split("/")[1].startswith("testing") for r in reads for p in r)
