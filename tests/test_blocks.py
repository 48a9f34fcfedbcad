"""Tests for workflow_scripts.similarity.blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from workflow_scripts.similarity import blocks
from workflow_scripts.similarity.cosine import angular_distance_matrix, cosine_matrix


def planted(sizes, within=0.8, between=0.2, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    L = sum(sizes)
    S = np.full((L, L), between)
    a = 0
    for s in sizes:
        S[a : a + s, a : a + s] = within
        a += s
    E = rng.normal(0.0, noise, size=(L, L))
    S = S + (E + E.T) / 2
    np.fill_diagonal(S, 1.0)
    return S


def ref_objective(S, seg):
    """Sum over blocks of |B|/L * (mean within (i != j) - mean to outside), written plainly."""
    S = (S + S.T) / 2
    L = S.shape[0]
    total = 0.0
    for a, b in seg:
        inside = list(range(a, b + 1))
        outside = [x for x in range(L) if x not in inside]
        if len(inside) < 2 or not outside:
            continue
        w = np.mean([S[i, j] for i in inside for j in inside if i != j])
        o = np.mean([S[i, j] for i in inside for j in outside])
        total += len(inside) / L * (w - o)
    return total


def all_segmentations(L):
    for cuts in itertools.product([False, True], repeat=L - 1):
        seg, start = [], 0
        for i, c in enumerate(cuts):
            if c:
                seg.append((start, i))
                start = i + 1
        seg.append((start, L - 1))
        yield seg


def test_recovers_planted_blocks():
    for seed in range(5):
        res = blocks.detect_blocks(planted([5, 7], seed=seed))
        assert res.boundaries == [(0, 4), (5, 11)], seed
        assert res.n_blocks == 2
    res = blocks.detect_blocks(planted([3, 4, 6], within=0.7, between=0.3, seed=1))
    assert res.boundaries == [(0, 2), (3, 6), (7, 12)]


def test_constant_matrix_gives_one_block():
    for c in (1.0, 0.3, -0.2):
        res = blocks.detect_blocks(np.full((9, 9), c))
        assert res.boundaries == [(0, 8)] and res.n_blocks == 1
        np.testing.assert_allclose(res.scores, 0.0, atol=1e-12)


def test_dynamic_programme_is_exact():
    rng = np.random.default_rng(3)
    L = 8
    S = rng.uniform(-1, 1, size=(L, L))  # not even symmetric: the objective uses (S+S^T)/2
    res = blocks.detect_blocks(S)
    best = {}
    for seg in all_segmentations(L):
        v = ref_objective(S, seg)
        best[len(seg)] = max(best.get(len(seg), -np.inf), v)
    np.testing.assert_allclose(res.scores, [best[b] for b in range(1, L + 1)], atol=1e-12)
    for b, seg in enumerate(res.segmentations, start=1):
        assert len(seg) == b
        assert ref_objective(S, seg) == pytest.approx(best[b], abs=1e-12)
    assert ref_objective(S, res.boundaries) == pytest.approx(max(best.values()), abs=1e-12)


def test_penalty_and_max_blocks():
    S = planted([4, 4, 4], within=0.9, between=0.1, noise=0.0)
    assert blocks.detect_blocks(S).n_blocks == 3
    assert blocks.detect_blocks(S, max_blocks=2).n_blocks == 2
    big = blocks.detect_blocks(S, criterion="penalized", penalty=10.0)
    assert big.boundaries == [(0, 11)]
    # noisy constant matrix: a modest penalty suppresses noise-driven splits
    noisy = planted([10], within=0.5, between=0.5, noise=0.02, seed=4)
    assert blocks.detect_blocks(noisy).n_blocks > 1
    assert blocks.detect_blocks(noisy, criterion="penalized", penalty=0.05).n_blocks == 1
    with pytest.raises(ValueError):
        blocks.detect_blocks(np.array([[1.0, np.nan], [np.nan, 1.0]]))


def test_deterministic_and_labels():
    S = planted([5, 7], seed=2)
    a, b = blocks.detect_blocks(S), blocks.detect_blocks(S.copy())
    assert a.boundaries == b.boundaries
    np.testing.assert_array_equal(a.scores, b.scores)
    labels = blocks.labels_from_boundaries(a.boundaries, 12)
    np.testing.assert_array_equal(labels, [0] * 5 + [1] * 7)


def test_end_to_end_on_layer_stack():
    # layers 0-4 are small perturbations of one representation, 5-11 of another
    rng = np.random.default_rng(5)
    N, T, D = 16, 3, 8
    base = [rng.standard_normal((N, T, D)) for _ in range(2)]
    H = np.stack(
        [base[0 if i < 5 else 1] + 0.3 * rng.standard_normal((N, T, D)) for i in range(12)]
    )
    assert blocks.detect_blocks(cosine_matrix(H)).boundaries == [(0, 4), (5, 11)]
    S = blocks.similarity_from_distance(angular_distance_matrix(H, "all"))
    assert blocks.detect_blocks(S).boundaries == [(0, 4), (5, 11)]
