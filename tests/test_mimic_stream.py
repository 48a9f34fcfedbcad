"""The mimic cell streams its caches (issue #15): lazy row views of a cache file
(workflow_scripts.backbones.rows), the trainers on those views give what they give on the same
arrays in memory, metrics do not depend on the evaluation batch size, and a whole cell never
asks a cache for more than one batch of rows (the labels apart)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mimic_tiny import SIZES, build_world
from test_mimic_run import run_tiny
from torch import nn

from workflow_scripts.backbones.cachefile import CacheFile, write_cache
from workflow_scripts.backbones.rows import CachedRows, StackedRows
from workflow_scripts.mimic.model import ClassifierHead, Mimicker
from workflow_scripts.mimic.train import (
    Stage1Config,
    Stage2Config,
    mimic_logits,
    mimic_metrics,
    train_stage1,
    train_stage2,
)

QUIET = lambda *_: None  # noqa: E731
T, D = 6, 16


def random_cache(path, n, seed, states=(0, 2)):
    """A float16 cache of ``n`` rows: feature projection, hidden states, final, labels."""
    rng = np.random.default_rng(seed)
    arrays = {
        "feature_projection": rng.standard_normal((n, T, D)).astype(np.float16),
        "final": rng.standard_normal((n, T, D)).astype(np.float16),
        "hidden_states": rng.standard_normal((len(states), n, T, D)).astype(np.float16),
    }
    labels = rng.integers(0, 3, n)
    write_cache(path, arrays, labels, [f"c{i}" for i in range(n)], states=list(states))
    return arrays, labels


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("mimic_stream"))


@pytest.fixture
def two_caches(tmp_path):
    """(training cache, validation cache, their arrays and labels)."""
    a_tr, y_tr = random_cache(tmp_path / "tr.safetensors", 37, 0)
    a_va, y_va = random_cache(tmp_path / "va.safetensors", 11, 1)
    return CacheFile(tmp_path / "tr.safetensors"), CacheFile(tmp_path / "va.safetensors"), \
        (a_tr, y_tr), (a_va, y_va)  # fmt: skip


def test_train_data_limited_to_the_first_training_clips(two_caches):
    """``train_clips`` (the ablation's knob) keeps the first rows of the training cache, all of
    the validation cache, and labels aligned with both."""
    from workflow_scripts.mimic.run import load_train_data

    tr, va, (a_tr, y_tr), (a_va, y_va) = two_caches
    caches = {"train_cache": tr, "val_cache": va}
    full = load_train_data(caches, [2, 3], 3, D, QUIET)
    part = load_train_data(caches, [2, 3], 3, D, QUIET, train_clips=10)
    assert (full.n_train, part.n_train, part.n_val) == (37, 10, 11)
    np.testing.assert_array_equal(part.labels, np.concatenate([y_tr[:10], y_va]))
    np.testing.assert_array_equal(part.features[part.val_idx], a_va["feature_projection"])
    np.testing.assert_array_equal(part.teacher[0][part.train_idx], a_tr["hidden_states"][1][:10])
    np.testing.assert_array_equal(part.teacher[1][part.train_idx], a_tr["final"][:10])


def test_row_views_read_the_rows_asked_for(two_caches):
    tr, va, (a_tr, y_tr), (a_va, _) = two_caches
    fp, st2, fin = CachedRows(tr, "feature_projection"), CachedRows(tr, 2), CachedRows(tr, "final")
    assert fp.shape == (37, T, D) and fp.dtype == np.float16 and len(st2) == 37 and fp.ndim == 3
    idx = np.array([30, 2, 2, 17, 0])  # any order, repeats
    np.testing.assert_array_equal(fp[idx], a_tr["feature_projection"][idx])
    np.testing.assert_array_equal(st2[idx], a_tr["hidden_states"][1][idx])
    np.testing.assert_array_equal(fin[5:9], a_tr["final"][5:9])
    np.testing.assert_array_equal(CachedRows(tr, "labels")[:], y_tr)
    first = CachedRows(tr, 0, limit=10)
    assert len(first) == 10 and first[:].shape == (10, T, D)
    with pytest.raises(IndexError):
        first[[10]]
    with pytest.raises(KeyError, match="does not store state 1"):
        CachedRows(tr, 1)
    both = StackedRows([fp, CachedRows(va, "feature_projection")])
    whole = np.concatenate([a_tr["feature_projection"], a_va["feature_projection"]])
    assert both.shape == whole.shape and len(both) == 48
    idx = np.array([47, 36, 37, 0, 40])  # across the two parts, any order
    np.testing.assert_array_equal(both[idx], whole[idx])
    np.testing.assert_array_equal(both[30:45], whole[30:45])
    with pytest.raises(IndexError):
        both[[48]]


def test_row_views_take_boolean_masks_as_numpy_does(two_caches):
    """A boolean mask selects the rows where it is true (it used to be read as the indices
    0 and 1); a mask of another length is an error, not a silent selection."""
    tr, va, (a_tr, _), (a_va, _) = two_caches
    fp = CachedRows(tr, "feature_projection")
    mask = np.zeros(37, dtype=bool)
    mask[[3, 20, 36]] = True
    np.testing.assert_array_equal(fp[mask], a_tr["feature_projection"][mask])
    assert fp[mask].shape == (3, T, D) and fp[~mask].shape == (34, T, D)
    np.testing.assert_array_equal(fp[list(mask)], a_tr["feature_projection"][mask])
    assert fp[np.zeros(37, dtype=bool)].shape == (0, T, D)
    with pytest.raises(IndexError, match="boolean mask"):
        fp[mask[:10]]
    both = StackedRows([fp, CachedRows(va, "feature_projection")])
    whole = np.concatenate([a_tr["feature_projection"], a_va["feature_projection"]])
    across = np.arange(48) % 5 == 0
    np.testing.assert_array_equal(both[across], whole[across])


def views_and_arrays(two_caches):
    """(inputs, [target], labels) as cache views and as the same arrays in memory."""
    tr, va, (a_tr, y_tr), (a_va, y_va) = two_caches
    views = [StackedRows([CachedRows(tr, k), CachedRows(va, k)])
             for k in ("feature_projection", "final")]  # fmt: skip
    arrays = [np.concatenate([a_tr[k], a_va[k]]) for k in ("feature_projection", "final")]
    return views, arrays, np.concatenate([y_tr, y_va])


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_trainers_on_cache_views_equal_trainers_on_arrays(two_caches, kind):
    """Same batches, same casts: the histories and weights are bit-identical."""
    views, arrays, labels = views_and_arrays(two_caches)
    tr, va = np.arange(37), np.arange(37, 48)
    runs = []
    for x, t in (views, arrays):
        torch.manual_seed(0)
        m = Mimicker(kind, 1, D, width=8, heads=2, ffn=8)
        head = ClassifierHead(nn.Linear(D, 8), nn.Linear(8, 3))
        s1 = train_stage1(m, x, [t], tr, va, Stage1Config(2, batch_size=8), log=QUIET)
        s2 = train_stage2(m, head, x, labels, tr, va, Stage2Config(2, batch_size=8), log=QUIET)
        runs.append((s1, s2, {**m.state_dict(), **head.state_dict()}))
    (a1, a2, wa), (b1, b2, wb) = runs
    assert a1["history"] == b1["history"] and a2["history"] == b2["history"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_validation_metrics_do_not_depend_on_the_batch_size(two_caches):
    views, _, labels = views_and_arrays(two_caches)
    x = views[0]
    torch.manual_seed(0)
    m = Mimicker("linear", 1, D, width=8)
    head = ClassifierHead(nn.Linear(D, 8), nn.Linear(8, 3))
    rows = np.arange(48)
    small, large = (mimic_metrics(m, head, x, labels, rows, bs) for bs in (3, 100))
    assert small[1] == large[1]
    assert small[0] == pytest.approx(large[0], rel=1e-6)
    logits = torch.from_numpy(mimic_logits(m, head, x, rows, 100))
    y = torch.from_numpy(labels)
    assert large[0] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert large[1] == float((logits.argmax(1) == y).double().mean())


@pytest.fixture
def reads(monkeypatch):
    """Every read of a cache file: (cache file name, tensor or state, rows read)."""
    log = []
    read, read_state = CacheFile.read, CacheFile.read_state

    def count(rows, n):
        return n if rows is None else len(range(n)[rows]) if isinstance(rows, slice) else len(rows)

    def read_spy(self, name, rows=None):
        log.append((self.path.name, name, count(rows, self.n)))
        return read(self, name, rows)

    def read_state_spy(self, state, rows=None):
        log.append((self.path.name, state, count(rows, self.n)))
        return read_state(self, state, rows)

    monkeypatch.setattr(CacheFile, "read", read_spy)
    monkeypatch.setattr(CacheFile, "read_state", read_state_spy)
    return log


CELLS = [("linear", 2, True), ("transformer", 1, True), ("linear", 1, False), ("no_mimic", 0, True)]


@pytest.mark.parametrize("kind, depth, freeze", CELLS)
def test_a_cell_asks_the_caches_for_one_batch_at_a_time(world, reads, kind, depth, freeze):
    bs = 4
    stage = {"epochs": 2, "batch_size": bs}
    run_tiny(world, kind, depth, stage1=stage, stage2={**stage, "freeze_mimicker": freeze})
    tensors = [r for r in reads if r[1] != "labels"]
    assert {r[1] for r in reads if r[2] > bs} <= {"labels"}  # only the labels are read whole
    train = [r for r in tensors if r[0] == "training.safetensors"]
    # every epoch reads every training row once per array, in batches
    arrays = 1 + (depth if kind != "no_mimic" else 0)
    assert len(train) >= 2 * arrays * SIZES["training"] // bs
    assert {r[0] for r in tensors} == {"training.safetensors", "validation.safetensors",
                                       "testing.safetensors"}  # fmt: skip
