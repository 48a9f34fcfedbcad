"""The paper's per-batch protocol (``similarity.batch_size``): each metric on consecutive
batches of b utterances, averaged over the batches, with a t interval over the batch values;
its config checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from scipy import stats

from workflow_scripts import similarity as sim
from workflow_scripts.similarity import plan
from workflow_scripts.similarity.batches import batch_slices, batched_metric


def _stack(seed=0, L=3, N=23, T=2, D=3):
    rng = np.random.default_rng(seed)
    H = np.empty((L, N, T, D))
    H[0] = rng.standard_normal((N, T, D)) + 0.5
    for i in range(1, L):
        H[i] = H[i - 1] + 0.7 * rng.standard_normal((N, T, D))
    return H.astype(np.float32)


#: metric -> (its parameters, the by-hand function of one batch)
BY_HAND = {
    "cosine": ({}, lambda X: sim.cosine_matrix(X)),
    "cka_linear": ({}, lambda X: sim.cka_matrix(X)),
    "cka_rbf": ({"debiased": True}, lambda X: sim.cka_matrix(X, "rbf", True)),
    "angular_distance": ({"reduce": "all"}, lambda X: sim.angular_distance_matrix(X, "all")),
    "block_influence": ({}, lambda X: sim.block_influence(X)),
}


def test_batch_slices_leave_the_remainder_out():
    assert batch_slices(23, 10) == [slice(0, 10), slice(10, 20)]
    assert batch_slices(20, 10) == [slice(0, 10), slice(10, 20)]
    assert batch_slices(9, 10) == []


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_batch_average_equals_hand_computation(name):
    # two batches of 10 (3 utterances left over): the mean of the two batch matrices, each
    # computed by hand with the all-at-once function; CI = t_1 interval of the two values
    H = _stack()
    params, one = BY_HAND[name]
    a, b = one(H[:, :10]), one(H[:, 10:20])
    logged = []
    res = batched_metric(name, H, {**params, "n_boot": 50}, 10, logged.append)
    key = "vector" if name == "block_influence" else "matrix"
    np.testing.assert_allclose(res[key], (a + b) / 2, atol=1e-15, rtol=0)
    half = stats.t.ppf(0.975, 1) * np.abs(a - b) / 2  # t_{B-1} s / sqrt(B), B = 2
    np.testing.assert_allclose(res["ci_lo"], (a + b) / 2 - half, atol=1e-12, rtol=0)
    np.testing.assert_allclose(res["ci_hi"], (a + b) / 2 + half, atol=1e-12, rtol=0)
    assert res["n_utterances"] == 20 and res["n_batches"] == 2 and res["batch_size"] == 10
    assert res["ci_scheme"] == "t interval over 2 batches of 10 utterances"
    assert logged == ["3 utterance(s) after the last full batch of 10 left out"]


def test_mutual_knn_batch_average_per_k():
    H = _stack(1, N=30)
    res = batched_metric("mutual_knn", H, {"ks": (1, 4, 9), "n_boot": 0}, 10)
    by_hand = [sim.mutual_knn_matrix(H[:, s], ks=(1, 4, 9)) for s in batch_slices(30, 10)]
    for k in (1, 4, 9):
        np.testing.assert_allclose(res["matrix"][k], np.mean([m[k] for m in by_hand], axis=0))
        assert np.isnan(res["ci_lo"][k]).all()
    assert res["ci_scheme"] == "none" and res["n_batches"] == 3
    with pytest.raises(ValueError, match="k=10 needs at least 11"):
        batched_metric("mutual_knn", H, {"ks": (10,)}, 10)
    with pytest.raises(ValueError, match="exceeds the 30 utterances"):
        batched_metric("cosine", H, {}, 31)


def test_a_batched_cell(tmp_path):
    from workflow_scripts.backbones.cachefile import write_cache
    from workflow_scripts.similarity.run import run_cell

    H = _stack(2, N=26).astype(np.float16)
    cache = tmp_path / "validation.safetensors"
    write_cache(cache, {"hidden_states": H}, np.zeros(26), [f"c{i}" for i in range(26)])
    cell = {"metric": "cka_linear", "params": {}, "clips": 25, "n_boot": 10, "seed": 0,
            "batch_size": 12}  # fmt: skip
    logged = []
    df = run_cell(str(cache), cell, logged.append, model="m")
    assert (df.n_utterances == 24).all() and (df.batch_size == 12).all()
    assert (df.ci_scheme == "t interval over 2 batches of 12 utterances").all()
    assert "1 utterance(s) after the last full batch of 12 left out" in logged
    assert "2 batches of 12 utterances, averaged" in logged
    want = (sim.cka_matrix(H[:, :12]) + sim.cka_matrix(H[:, 12:24])) / 2
    got = np.zeros((3, 3))
    got[df.layer_i, df.layer_j] = df.value
    np.testing.assert_allclose(got, want, atol=1e-15, rtol=0)
    at_once = run_cell(str(cache), {**cell, "batch_size": None})
    assert at_once.batch_size.isna().all() and (at_once.n_utterances == 25).all()
    assert np.abs(at_once.value - df.value).max() > 1e-4  # CKA depends on N


CONFIG = {
    "cache": {"clips": 512},
    "similarity": {
        "clips": None,
        "batch_size": 128,
        "metrics": {
            "mutual_knn": {"ks": [1, 64, 128, 200]},
            "cosine": {},
            "block_influence": {"variant": "knn"},
        },  # fmt: skip
    },
}


def test_config_problems_name_ks_a_batch_cannot_reach():
    problems = plan.config_problems(CONFIG)
    assert problems == [
        "config.similarity.metrics.mutual_knn.ks: k = [128, 200] cannot be reached in a batch "
        "of similarity.batch_size = 128 utterances (at most 127 neighbours with the diagonal "
        "masked); use ks <= 127"
    ]
    cfg = copy.deepcopy(CONFIG)
    cfg["similarity"]["metrics"]["block_influence"]["ks"] = [2, 256]
    cfg["similarity"]["batch_size"] = 1024
    problems = plan.config_problems(cfg)
    assert problems[0].startswith("config.similarity.batch_size: 1024 is more than the 512")
    assert len(problems) == 1  # ks [.., 256] and [.., 200] are < 1024
    cfg["similarity"]["batch_size"] = 100
    assert [p.split(":")[0] for p in plan.config_problems(cfg)] == [
        "config.similarity.metrics.mutual_knn.ks",
        "config.similarity.metrics.block_influence.ks",
    ]
    cfg["similarity"]["batch_size"] = None  # all 512 at once: half-samples of 256
    assert plan.config_problems(cfg) == []
    cfg["similarity"]["metrics"]["mutual_knn"]["ks"] = [1, 300]
    assert plan.config_problems(cfg) == [
        "config.similarity.metrics.mutual_knn.ks: k = [300] cannot be reached in the CI's "
        "half-samples of 256 utterances (at most 255 neighbours with the diagonal masked); use "
        "ks <= 255"
    ]
    cfg["similarity"]["metrics"]["mutual_knn"]["ci_scheme"] = "conditional"
    assert plan.config_problems(cfg) == []


def test_paper_config_batches_of_128_with_reachable_ks():
    with open("config/paper.yaml") as f:
        paper = yaml.safe_load(f)["similarity"]
    assert paper["batch_size"] == 128 and paper["clips"] == 2560  # 20 batches, as the paper
    assert max(paper["metrics"]["mutual_knn"]["ks"]) < 128
    assert plan.config_problems({"similarity": paper}) == []
    with open("config.yaml") as f:
        assert yaml.safe_load(f)["similarity"]["batch_size"] is None
