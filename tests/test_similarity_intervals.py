"""The similarity CI schemes: the CKA jackknife (leave-one-out HSIC by downdating), mutual k-NN
half-sampling with recomputed neighbour sets, and the ``ci_scheme`` label of every metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from workflow_scripts import similarity as sim
from workflow_scripts.similarity import hsic, intervals, knn, registry, stack


def _stack(seed=0, L=3, N=15, F=6):
    rng = np.random.default_rng(seed)
    H = np.empty((L, N, F))
    H[0] = rng.standard_normal((N, F)) + 0.5
    for i in range(1, L):
        H[i] = H[i - 1] + 0.7 * rng.standard_normal((N, F))
    return H


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_leave_one_out_hsic_equals_recomputation(kernel, debiased):
    H = _stack(1)
    V, _ = hsic.centred_grams(stack.Stack(H), kernel, 0.8)
    loo = hsic.leave_one_out_hsic(V, debiased).numpy()
    assert loo.shape == (15, 3, 3)
    for i in range(15):
        keep = np.delete(np.arange(15), i)
        Vi = V[:, keep][:, :, keep].clone()
        for layer in range(3):  # re-centre the sub-Grams (the RBF bandwidth stays fixed)
            K = Vi[layer]
            hsic.centre_rows(K, 0, K.sum(1), K.diagonal().clone(), False)
        want = hsic.hsic_from_centred(Vi, debiased).numpy()
        np.testing.assert_allclose(loo[i], want, rtol=1e-10, atol=1e-12)
        if kernel == "linear":  # and from the features themselves
            direct = sim.hsic_matrix(H[:, keep], kernel, debiased)
            np.testing.assert_allclose(loo[i], direct, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_jackknife_is_the_textbook_jackknife(debiased):
    H = _stack(2, N=20)
    n = 20
    point = sim.cka_matrix(H, debiased=debiased)
    loo = np.stack([sim.cka_matrix(np.delete(H, i, axis=1), debiased=debiased) for i in range(n)])
    se = np.sqrt((n - 1) / n * ((loo - loo.mean(0)) ** 2).sum(0))
    half = stats.t.ppf(0.975, n - 1) * se
    lo, hi = sim.cka_ci(H, debiased=debiased)  # the default scheme
    np.testing.assert_allclose(lo, point - half, atol=1e-10, rtol=0)
    np.testing.assert_allclose(hi, point + half, atol=1e-10, rtol=0)
    assert np.all(np.diag(hi - lo) < 1e-10)  # CKA(i, i) = 1 in every subsample


def test_bootstrap_ties_can_exclude_the_estimate_the_jackknife_cannot():
    # high-dimensional, diagonal-dominated Grams at N = 128 (the example): the
    # bootstrap's tied pairs inflate every replicate
    rng = np.random.default_rng(3)
    X = rng.standard_normal((128, 2000))
    H = np.stack([X, X + 0.15 * rng.standard_normal((128, 2000))])
    point = sim.cka_matrix(H)[0, 1]
    lo_b, hi_b = sim.cka_ci(H, n_boot=100, scheme="bootstrap")
    assert lo_b[0, 1] > point  # the whole "95% interval" lies above the estimate
    lo, hi = sim.cka_ci(H)
    assert lo[0, 1] < point < hi[0, 1]


def test_knn_half_samples_recompute_the_neighbour_sets(monkeypatch):
    H = _stack(4, L=3, N=40)
    lists, order = knn._knn_lists(stack.Stack(H), 7, True, keep_order=True)
    reps = knn._half_sample_scores(order, [2, 7], 6, 5)
    monkeypatch.setattr(stack, "WORK_BYTES", 1)  # one replicate per chunk: the same values
    chunked = knn._half_sample_scores(order, [2, 7], 6, 5)
    for k in (2, 7):
        np.testing.assert_array_equal(chunked[k], reps[k])
    monkeypatch.undo()
    rng = np.random.default_rng(5)
    subsets = [np.sort(rng.permutation(40)[:20]) for _ in range(6)]
    for r, idx in enumerate(subsets):
        want = sim.mutual_knn_matrix(H[:, idx], ks=(2, 7))
        for k in (2, 7):
            np.testing.assert_allclose(reps[k][r], want[k], atol=1e-12, rtol=0)
    mats, lo, hi = sim.mutual_knn_half_ci(H, ks=(2, 7), n_boot=50)
    for k in (2, 7):
        np.testing.assert_array_equal(mats[k], sim.mutual_knn_matrix(H, ks=(k,))[k])
        assert np.all(lo[k] <= mats[k] + 1e-12) and np.all(mats[k] <= hi[k] + 1e-12)
        assert np.all((hi[k] - lo[k])[~np.eye(3, dtype=bool)] > 0)
    with pytest.raises(ValueError, match="half-samples of 20"):
        sim.mutual_knn_half_ci(H, ks=(20,))


def test_knn_half_sampling_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(knn, "GRAM_MEMORY_LIMIT", 1000)
    with pytest.raises(MemoryError, match="conditional"):
        sim.compute_metric("mutual_knn", _stack(N=30), {"ks": (2,), "n_boot": 5})
    res = sim.compute_metric("mutual_knn", _stack(N=30), {"ks": (2,), "n_boot": 5,
                                                          "ci_scheme": "conditional"})  # fmt: skip
    assert res["ci_scheme"] == intervals.KNN_CONDITIONAL


def test_every_metric_states_its_ci_scheme():
    H = _stack(6, L=3, N=24).reshape(3, 24, 2, 3)
    want = {
        "cosine": intervals.PERCENTILE,
        "cka_linear": intervals.CKA["jackknife"],
        "cka_rbf": intervals.CKA["jackknife"],
        "mutual_knn": intervals.KNN_HALF,
        "angular_distance": intervals.PERCENTILE,
        "block_influence": intervals.PERCENTILE,
    }
    assert set(want) == set(registry.names())
    for name, label in want.items():
        params = {"n_boot": 20, **({"ks": (2,)} if name == "mutual_knn" else {})}
        assert sim.compute_metric(name, H, params)["ci_scheme"] == label, name
        assert sim.compute_metric(name, H, {**params, "n_boot": 0})["ci_scheme"] == "none"
    for scheme in ("half", "bootstrap"):
        res = sim.compute_metric("cka_linear", H, {"n_boot": 20, "ci_scheme": scheme})
        assert res["ci_scheme"] == intervals.CKA[scheme]
    res = sim.compute_metric("block_influence", H, {"n_boot": 20, "variant": "knn", "ks": (2,)})
    assert res["ci_scheme"] == intervals.KNN_CONDITIONAL
    assert "conditional" in intervals.KNN_CONDITIONAL and "neighbour sets fixed" in (
        intervals.KNN_CONDITIONAL
    )


def test_t_interval_and_jackknife_edge_cases():
    mean, lo, hi = intervals.t_interval(np.array([[1.0], [3.0]]), 0.05)
    assert mean[0] == 2.0 and hi[0] - mean[0] == pytest.approx(stats.t.ppf(0.975, 1) * 1.0)
    _, lo, hi = intervals.t_interval(np.array([[1.0]]), 0.05)
    assert np.isnan(lo).all() and np.isnan(hi).all()
    with pytest.raises(ValueError):
        intervals.jackknife_ci(np.zeros(2), np.zeros((2, 2)), 0.05)
    with pytest.raises(ValueError, match="unknown CI scheme"):
        sim.cka_ci(_stack(), scheme="percentile")


def test_knn_half_sample_lists_fall_back_to_the_whole_order():
    # 1-D positive features, raw inner products: every utterance's order starts with the
    # largest x, so a half-sample of the 100 smallest has no member in any order's prefix
    x = np.linspace(1.0, 2.0, 200)
    H = np.stack([x, x[::-1] ** 2])[:, :, None]
    _, order = knn._knn_lists(stack.Stack(H), 2, False, keep_order=True)
    rows = np.sort(np.argsort(H[0, :, 0])[:100])
    got = knn._half_sample_lists(order, torch.as_tensor(rows[None]), 2)[:, 0]
    want, _ = knn._knn_lists(stack.Stack(H[:, rows]), 2, False)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
