"""Tests for the similarity metrics (workflow_scripts.similarity).

The reference implementations below are deliberately naive: one layer pair at a time, plain
numpy float64, formulas written out as in the papers, no shared code with the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from workflow_scripts import similarity as sim
from workflow_scripts.similarity import cka as cka_mod
from workflow_scripts.similarity import hsic, stack

ATOL = 1e-6


# ----------------------------------------------------------------------------------------
# Independent per-pair references
# ----------------------------------------------------------------------------------------
def _cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def ref_cosine(H, pooling):
    L, N = H.shape[:2]
    out = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            vals = []
            for n in range(N):
                if pooling == "flatten":
                    vals.append(_cos(H[i, n].ravel(), H[j, n].ravel()))
                else:
                    vals.append(np.mean([_cos(H[i, n, t], H[j, n, t]) for t in range(H.shape[2])]))
            out[i, j] = np.mean(vals)
    return out


def ref_angular(H, reduce):
    L, N, T, _ = H.shape

    def ang(a, b):
        return math.acos(min(1.0, max(-1.0, _cos(a, b)))) / math.pi

    out = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            if i == j:
                continue
            vals = []
            for n in range(N):
                if reduce == "last":
                    vals.append(ang(H[i, n, -1], H[j, n, -1]))
                elif reduce == "mean":
                    vals.append(ang(H[i, n].mean(0), H[j, n].mean(0)))
                elif reduce == "flatten":
                    vals.append(ang(H[i, n].ravel(), H[j, n].ravel()))
                else:
                    vals.append(np.mean([ang(H[i, n, t], H[j, n, t]) for t in range(T)]))
            out[i, j] = np.mean(vals)
    return out


def ref_kernel(X, kernel, frac=0.8):
    if kernel == "linear":
        return X @ X.T
    d = pdist(X)
    sigma = frac * np.median(d)
    return np.exp(-(squareform(d) ** 2) / (2 * sigma**2))


def ref_hsic_biased(K, L):
    n = K.shape[0]
    Hc = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ Hc @ L @ Hc) / (n - 1) ** 2


def ref_hsic_unbiased(K, L):
    """Song et al. (2012), eq. (5)."""
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    term = (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    )
    return term / (n * (n - 3))


def ref_cka(H, kernel="linear", debiased=False, frac=0.8):
    L, N = H.shape[:2]
    Ks = [ref_kernel(H[i].reshape(N, -1).astype(np.float64), kernel, frac) for i in range(L)]
    h = ref_hsic_unbiased if debiased else ref_hsic_biased
    out = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            out[i, j] = h(Ks[i], Ks[j]) / math.sqrt(h(Ks[i], Ks[i]) * h(Ks[j], Ks[j]))
    return out


def ref_knn_sets(X, k, normalize):
    X = X.reshape(X.shape[0], -1).astype(np.float64)
    if normalize:
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    sets = []
    for i in range(X.shape[0]):
        s = X @ X[i]
        s[i] = -np.inf
        sets.append(set(np.argsort(-s, kind="stable")[:k].tolist()))
    return sets


def ref_mutual_knn(H, k, normalize=True):
    L, N = H.shape[:2]
    sets = [ref_knn_sets(H[i], k, normalize) for i in range(L)]
    out = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            out[i, j] = np.mean([len(sets[i][n] & sets[j][n]) / k for n in range(N)])
    return out


def _stack(seed=0, L=4, N=24, T=3, D=5, dtype=np.float32):
    """Random stack whose layers are correlated (a residual-stream-like random walk)."""
    rng = np.random.default_rng(seed)
    H = np.empty((L, N, T, D))
    H[0] = rng.standard_normal((N, T, D)) + 0.5
    for i in range(1, L):
        H[i] = H[i - 1] + 0.7 * rng.standard_normal((N, T, D))
    return H.astype(dtype)


# ----------------------------------------------------------------------------------------
# Identity / invariance
# ----------------------------------------------------------------------------------------
def test_identical_layers_give_perfect_similarity():
    H = _stack(1)
    H[2] = H[1]
    assert sim.cosine_matrix(H)[1, 2] == pytest.approx(1.0, abs=1e-12)
    assert sim.cosine_matrix(H, "per_frame")[1, 2] == pytest.approx(1.0, abs=1e-12)
    for kernel in ("linear", "rbf"):
        for deb in (False, True):
            assert sim.cka_matrix(H, kernel, deb)[1, 2] == pytest.approx(1.0, abs=1e-10)
    for k, m in sim.mutual_knn_matrix(H, ks=(1, 4, 9)).items():
        assert m[1, 2] == 1.0, k
    for reduce in ("last", "mean", "all", "flatten"):
        d = sim.angular_distance_matrix(H, reduce)
        assert d[1, 2] == pytest.approx(0.0, abs=1e-6)
        assert np.all(np.diag(d) == 0.0)
        assert d[0, 3] > 0.05  # and different layers are not at distance 0
    assert sim.block_influence(H)[1] == pytest.approx(0.0, abs=1e-12)
    assert sim.block_influence_per_token(H)[1] == pytest.approx(0.0, abs=1e-12)
    assert sim.knn_block_influence(H)[1] == 0.0
    assert sim.block_influence(H)[0] > 0.01


def test_cka_invariant_to_orthogonal_and_isotropic_scaling_but_not_to_linear_maps():
    rng = np.random.default_rng(2)
    N, F = 40, 12
    # anisotropic features, as in real representations
    X = rng.standard_normal((N, F)) * np.linspace(0.2, 3.0, F)
    Q, _ = np.linalg.qr(rng.standard_normal((F, F)))
    U, _ = np.linalg.qr(rng.standard_normal((F, F)))
    V, _ = np.linalg.qr(rng.standard_normal((F, F)))
    A = U @ np.diag(np.logspace(-3, 2, F)) @ V.T  # random, ill-conditioned (cond 1e5)
    H = np.stack([X, 3.7 * X @ Q, X @ A, 0.01 * X])
    for kernel in ("linear", "rbf"):
        c = sim.cka_matrix(H, kernel)
        assert c[0, 1] == pytest.approx(1.0, abs=1e-10), kernel
        assert c[0, 3] == pytest.approx(1.0, abs=1e-10), kernel
        assert c[0, 2] < 0.9, kernel  # a generic linear map changes CKA noticeably
    assert sim.cka_matrix(H, debiased=True)[0, 1] == pytest.approx(1.0, abs=1e-10)
    # cosine compares the layers in the same space: scale-invariant, not rotation-invariant
    assert sim.cosine_matrix(H)[0, 3] == pytest.approx(1.0, abs=1e-10)
    assert sim.cosine_matrix(H)[0, 1] < 0.9


def test_mutual_knn_of_permuted_samples_is_near_chance():
    # Layer 1 = layer 0 with its utterances shuffled, so the neighbourhoods of utterance i in
    # the two layers are unrelated; the overlap of two k-subsets of the N-1 other utterances
    # is then hypergeometric with mean k^2/(N-1), i.e. score k/(N-1) = 0.0251 for k=10,
    # N=400. Per-utterance variance k p (1-p) (N-1-k)/(N-2) = 0.238 (p = k/(N-1)), so the
    # standard error of the mean score over N utterances is about sqrt(0.238/400)/k = 0.0024
    # (neighbourhoods overlap, so treat it as approximate); we allow 5 SE = 0.012.
    rng = np.random.default_rng(3)
    N, k = 400, 10
    X = rng.standard_normal((N, 16))
    H = np.stack([X, X[rng.permutation(N)]])
    score = sim.mutual_knn_matrix(H, ks=(k,))[k][0, 1]
    assert abs(score - k / (N - 1)) < 0.012
    assert sim.mutual_knn_matrix(H, ks=(k,))[k][0, 0] == 1.0


def test_debiased_hsic_is_unbiased_biased_is_not():
    # R independent draws of independent (X, Y) pairs (true HSIC = 0), n = 8 samples each,
    # skewed non-centred features; layers 2r and 2r+1 form one pair.
    rng = np.random.default_rng(4)
    R, n, d = 1000, 8, 3
    H = rng.exponential(size=(2 * R, n, d)) + 1.0
    r = np.arange(R)
    for kernel in ("linear", "rbf"):
        hu = sim.hsic_matrix(H, kernel, debiased=True)[2 * r, 2 * r + 1]
        hb = sim.hsic_matrix(H, kernel, debiased=False)[2 * r, 2 * r + 1]
        se_u = hu.std(ddof=1) / math.sqrt(R)
        se_b = hb.std(ddof=1) / math.sqrt(R)
        assert abs(hu.mean()) < 4 * se_u, kernel
        assert hb.mean() > 10 * se_b, kernel
        assert hb.mean() > 5 * abs(hu.mean()), kernel


# ----------------------------------------------------------------------------------------
# Agreement with the references
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def H4():
    return _stack(5, L=4, N=24, T=3, D=5)


@pytest.mark.parametrize("pooling", ["flatten", "per_frame"])
def test_cosine_matches_reference(H4, pooling):
    ref = ref_cosine(H4.astype(np.float64), pooling)
    np.testing.assert_allclose(sim.cosine_matrix(H4, pooling), ref, atol=ATOL, rtol=0)
    got_t = sim.cosine_matrix(torch.from_numpy(H4).double(), pooling)
    np.testing.assert_allclose(got_t, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("reduce", ["last", "mean", "all", "flatten"])
def test_angular_distance_matches_reference(H4, reduce):
    ref = ref_angular(H4.astype(np.float64), reduce)
    got = sim.angular_distance_matrix(H4, reduce)
    assert got.shape == (4, 4) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_reference(H4, kernel, debiased):
    ref = ref_cka(H4.astype(np.float64), kernel, debiased)
    got = sim.cka_matrix(H4, kernel, debiased)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    # float16 cache input: same result as the float64 reference on the rounded values
    H16 = H4.astype(np.float16)
    ref16 = ref_cka(H16.astype(np.float64), kernel, debiased)
    np.testing.assert_allclose(sim.cka_matrix(H16, kernel, debiased), ref16, atol=ATOL, rtol=0)


def test_hsic_matches_song_formula(H4):
    N = H4.shape[1]
    K = [ref_kernel(H4[i].reshape(N, -1).astype(np.float64), "linear") for i in range(4)]
    got = sim.hsic_matrix(H4, debiased=True)
    ref = np.array([[ref_hsic_unbiased(a, b) for b in K] for a in K])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    got_b = sim.hsic_matrix(H4, debiased=False)
    ref_b = np.array([[ref_hsic_biased(a, b) for b in K] for a in K])
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("normalize", [True, False])
def test_mutual_knn_matches_reference(H4, normalize):
    ks = (1, 3, 7, 23)
    got = sim.mutual_knn_matrix(H4, ks=ks, normalize=normalize)
    assert sorted(got) == list(ks)
    for k in ks:
        ref = ref_mutual_knn(H4.astype(np.float64), k, normalize)
        np.testing.assert_allclose(got[k], ref, atol=ATOL, rtol=0)
    assert got[23][0, 3] == 1.0  # k = N-1: everyone is everyone's neighbour
    with pytest.raises(ValueError):
        sim.mutual_knn_matrix(H4, ks=(24,))


def test_block_influence_matches_reference(H4):
    Hd = H4.astype(np.float64)
    L = Hd.shape[0]
    bi = [1 - np.mean([_cos(Hd[i, n].ravel(), Hd[i + 1, n].ravel()) for n in range(24)])
          for i in range(L - 1)]  # fmt: skip
    np.testing.assert_allclose(sim.block_influence(H4), bi, atol=ATOL, rtol=0)
    bit = [
        1 - np.mean([_cos(Hd[i, n, t], Hd[i + 1, n, t]) for n in range(24) for t in range(3)])
        for i in range(L - 1)
    ]
    np.testing.assert_allclose(sim.block_influence_per_token(H4), bit, atol=ATOL, rtol=0)
    # ks above N-1 are dropped
    ks = (2, 4, 8, 16, 32, 64)
    knn = [1 - np.mean([ref_mutual_knn(Hd[i : i + 2], k)[0, 1] for k in (2, 4, 8, 16)])
           for i in range(L - 1)]  # fmt: skip
    np.testing.assert_allclose(sim.knn_block_influence(H4, ks), knn, atol=ATOL, rtol=0)
    with pytest.raises(ValueError):
        sim.knn_block_influence(H4, ks=(64,))


# ----------------------------------------------------------------------------------------
# Chunked / large-N paths
# ----------------------------------------------------------------------------------------
def test_chunked_paths_agree_with_gram_path(monkeypatch, H4):
    ref = {
        (kern, deb): sim.cka_matrix(H4, kern, deb, method="gram")
        for kern in ("linear", "rbf")
        for deb in (False, True)
    }
    cos = sim.cosine_matrix(H4, "per_frame")
    ang = sim.angular_distance_matrix(H4, "all")
    knn = sim.mutual_knn_matrix(H4, ks=(2, 5))
    # tiny working chunks: features, utterances and Gram rows are all split into pieces
    monkeypatch.setattr(stack, "WORK_BYTES", 8 * 24 * 4)
    for (kern, deb), r in ref.items():
        got = sim.cka_matrix(H4, kern, deb, method="rowblock", memory_limit=8 * 4 * 24 * 2 * 5)
        np.testing.assert_allclose(got, r, atol=1e-10, rtol=0)
        # "auto" must fall back to a non-Gram path when the Grams do not fit
        got = sim.cka_matrix(H4, kern, deb, memory_limit=10_000)
        np.testing.assert_allclose(got, r, atol=1e-10, rtol=0)
        np.testing.assert_allclose(sim.cka_matrix(H4, kern, deb), r, atol=1e-10, rtol=0)
    feats = sim.cka_matrix(H4, method="features")
    np.testing.assert_allclose(feats, ref["linear", False], atol=1e-10, rtol=0)
    np.testing.assert_allclose(sim.cosine_matrix(H4, "per_frame"), cos, atol=1e-12, rtol=0)
    np.testing.assert_allclose(sim.angular_distance_matrix(H4, "all"), ang, atol=1e-12, rtol=0)
    got_knn = sim.mutual_knn_matrix(H4, ks=(2, 5))
    for k in (2, 5):
        np.testing.assert_array_equal(got_knn[k], knn[k])
    with pytest.raises(MemoryError):
        sim.cka_ci(H4, n_boot=5, memory_limit=10_000)


def test_rbf_median_subset_is_consistent_between_paths(monkeypatch, H4):
    monkeypatch.setattr(hsic, "RBF_MEDIAN_MAX_N", 10)  # force the subset median for N=24
    a = sim.cka_matrix(H4, "rbf", method="gram")
    b = sim.cka_matrix(H4, "rbf", method="rowblock", memory_limit=4000)
    np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)
    monkeypatch.setattr(hsic, "RBF_MEDIAN_MAX_N", 4096)
    assert np.abs(sim.cka_matrix(H4, "rbf") - a).max() > 1e-6  # the subset did matter


# ----------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------
def test_bootstrap_ci_width_matches_normal_theory():
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, size=(400, 2))
    lo, hi = sim.bootstrap_ci(x, n_boot=2000, alpha=0.05, seed=1)
    expected = 2 * 1.96 * x.std(ddof=1, axis=0) / math.sqrt(400)
    np.testing.assert_allclose(hi - lo, expected, rtol=0.15)
    assert np.all((lo < x.mean(0)) & (x.mean(0) < hi))
    lo2, hi2 = sim.bootstrap_ci(x, n_boot=2000, alpha=0.05, seed=1)
    np.testing.assert_array_equal(lo, lo2)  # deterministic for a fixed seed


def _widths_and_containment(get):
    widths = []
    for N in (20, 320):
        point, lo, hi = get(N)
        off = ~np.eye(point.shape[0], dtype=bool)
        assert np.all(lo[off] <= point[off] + 1e-12) and np.all(point[off] <= hi[off] + 1e-12)
        widths.append(np.mean((hi - lo)[off]))
    return widths


def test_cosine_and_angular_ci_contain_estimate_and_narrow():
    def cos(N):
        per = sim.cosine_matrix(_stack(7, N=N), return_per_utterance=True)
        assert per.shape == (N, 4, 4)
        return (per.mean(0), *sim.bootstrap_ci(per, n_boot=300))

    def ang(N):
        per = sim.angular_distance_matrix(_stack(7, N=N), "mean", return_per_utterance=True)
        return (per.mean(0), *sim.bootstrap_ci(per, n_boot=300))

    for get in (cos, ang):
        w_small, w_large = _widths_and_containment(get)
        assert w_large < 0.5 * w_small  # expected ratio sqrt(20/320) = 0.25


def test_cka_and_knn_ci_contain_estimate_and_narrow():
    def cka(scheme):
        def get(N):
            H = _stack(8, N=N, T=2, D=3)
            lo, hi = sim.cka_ci(H, n_boot=60, scheme=scheme)
            return sim.cka_matrix(H), lo, hi

        return get

    def knn(N):
        H = _stack(8, N=N, T=2, D=3)
        (lo, hi) = sim.mutual_knn_bootstrap_ci(H, ks=(5,), n_boot=300)[5]
        return sim.mutual_knn_matrix(H, ks=(5,))[5], lo, hi

    for get in (cka("jackknife"), cka("bootstrap"), cka("half"), knn):
        w_small, w_large = _widths_and_containment(get)
        assert w_large < 0.6 * w_small


def test_cka_bootstrap_resamples_gram_like_recomputation():
    # one replicate of the cheap Gram resampling == CKA recomputed from resampled features
    H = _stack(9, N=15)
    rng = np.random.default_rng(0)
    sel = rng.integers(0, 15, size=15)
    for kernel, debiased in (("linear", True), ("linear", False), ("rbf", True)):
        V, _ = hsic.centred_grams(stack.Stack(H), kernel, 0.8)
        boot = cka_mod._resampled_cka(V, debiased, 1, 0, "bootstrap")[0]
        direct = sim.cka_matrix(H[:, sel], kernel, debiased)
        if kernel == "rbf":  # the bootstrap keeps the full-sample bandwidth: compare loosely
            assert np.abs(boot - direct).max() < 0.1
        else:
            np.testing.assert_allclose(boot, direct, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sim.METRIC_NAMES)
def test_compute_metric_and_long_rows(H4, name):
    params = {"n_boot": 40}
    if name == "mutual_knn":
        params["ks"] = (2, 5)
    res = sim.compute_metric(name, H4, params)
    rows = sim.to_long_rows(name, res)
    assert res["params"]["n_boot"] == 40 and res["n_layers"] == 4
    keys = {"metric", "layer_i", "layer_j", "k", "value", "ci_lo", "ci_hi"}
    assert all(set(r) == keys for r in rows)
    if name == "block_influence":
        assert res["kind"] == "vector" and res["vector"].shape == (3,)
        np.testing.assert_allclose(res["vector"], sim.block_influence(H4))
        assert [(r["layer_i"], r["layer_j"]) for r in rows] == [(0, 1), (1, 2), (2, 3)]
    elif name == "mutual_knn":
        assert res["kind"] == "matrix_per_k" and len(rows) == 2 * 16
        assert {r["k"] for r in rows} == {2, 5}
        np.testing.assert_allclose(res["matrix"][5], sim.mutual_knn_matrix(H4, (5,))[5])
    else:
        assert res["kind"] == "matrix" and res["matrix"].shape == (4, 4) and len(rows) == 16
        assert all(r["k"] is None for r in rows)
        r12 = next(r for r in rows if (r["layer_i"], r["layer_j"]) == (1, 2))
        assert r12["value"] == pytest.approx(res["matrix"][1, 2])
        assert r12["ci_lo"] <= r12["value"] <= r12["ci_hi"] or name.startswith("cka")
    assert res["higher_is_similar"] == (name not in ("angular_distance", "block_influence"))


def test_compute_metric_options_and_errors(H4):
    r = sim.compute_metric("block_influence", H4, {"variant": "per_token", "n_boot": 0})
    np.testing.assert_allclose(r["vector"], sim.block_influence_per_token(H4))
    assert np.all(np.isnan(r["ci_lo"]))
    r = sim.compute_metric("cka_rbf", H4, {"debiased": True, "n_boot": 0})
    np.testing.assert_allclose(r["matrix"], sim.cka_matrix(H4, "rbf", True))
    r = sim.compute_metric("angular_distance", H4, {"reduce": "all", "n_boot": 0})
    np.testing.assert_allclose(r["matrix"], sim.angular_distance_matrix(H4, "all"))
    with pytest.raises(ValueError, match="unknown parameter"):
        sim.compute_metric("cosine", H4, {"pooling": "flatten", "kernel": "rbf"})
    with pytest.raises(ValueError, match="unknown metric"):
        sim.compute_metric("cka", H4, {})
    with pytest.raises(ValueError):
        sim.cosine_matrix(H4.reshape(4, 24, -1), "per_frame")  # needs frames


def test_symmetric_blocked_gram_matches_plain_product(monkeypatch):
    # N >= 512 switches the full Gram to the block-triangular product; check it (and with
    # feature chunking) against a plain product, and CKA against the feature-space path
    rng = np.random.default_rng(10)
    H = rng.standard_normal((3, 1030, 7)).astype(np.float32)
    X = H[1].astype(np.float64)
    np.testing.assert_allclose(stack.gram(stack.Stack(H), 1).numpy(), X @ X.T, atol=1e-10)
    monkeypatch.setattr(stack, "WORK_BYTES", 8 * 1030 * 3)
    np.testing.assert_allclose(stack.gram(stack.Stack(H), 1).numpy(), X @ X.T, atol=1e-10)
    np.testing.assert_allclose(
        sim.cka_matrix(H, method="gram"), sim.cka_matrix(H, method="features"), atol=1e-10
    )


@pytest.mark.parametrize("scheme", ["bootstrap", "half"])
def test_weighted_cka_resampling_equals_explicit_gathering(scheme):
    H = _stack(11, N=30)
    for kernel in ("linear", "rbf"):
        V, _ = hsic.centred_grams(stack.Stack(H), kernel, 0.8)
        w = cka_mod._resample_weights(30, 7, 3, scheme)
        assert np.all(w.sum(1) == (30 if scheme == "bootstrap" else 15))
        a = cka_mod._resampled_cka_weighted(V, w)
        b = cka_mod._resampled_cka_gather(V, False, w)
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)
        assert np.ptp(a[:, 0, 3]) > 1e-3  # the replicates do differ
