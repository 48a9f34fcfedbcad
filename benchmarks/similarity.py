"""Benchmark: all-pairs layer-similarity metrics vs naive per-pair implementations.

On random layer stacks (default N=2048 utterances, L=13 layers, 49 frames x 768 dims =
37,632 flattened features, float32, ~4 GB) it times

* linear CKA: ``similarity.cka_matrix`` (each layer's centred Gram computed once, all pairs
  from one product) vs a naive per-pair implementation of the same formula (for every pair:
  cast and centre both layers, form both Grams -- or ``X^T Y`` when F <= N -- and the three
  Frobenius products), and vs the floor: the L float64 Gram products ``X @ X.T`` alone;
* cosine (flatten pooling) all-pairs vs per-pair;
* mutual k-NN all-pairs vs per-pair (neighbour lists recomputed for every pair);

checks that the results agree to 1e-5 and prints a table of ratios. Per-pair timings can be
taken on a subset of the L(L-1)/2 pairs (``--naive-pairs``) and extrapolated linearly
(every pair does the same work); the table says when that was done. It also times the
default CIs against the point estimates alone (``--skip ci`` to leave out): CKA's delete-1
jackknife (leave-one-out HSICs downdated from the Grams) and mutual k-NN's half-sampling
(neighbour sets recomputed in each of ``--n-boot`` half-samples).

Usage: python benchmarks/similarity.py [--n 512] [--layers 13] [--frames 49] [--dim 768]
       [--naive-pairs 4] [--k 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts import similarity as sim  # noqa: E402


def make_stack(n: int, layers: int, feats: int, seed: int, device: str) -> torch.Tensor:
    """(L, N, F) float32, generated layer by layer as a random walk (correlated layers)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    H = torch.empty((layers, n, feats), dtype=torch.float32, device=device)
    prev = None
    for layer in range(layers):
        x = torch.randn((n, feats), generator=g).to(device)
        cur = x if prev is None else 0.8 * prev + 0.6 * x
        H[layer] = cur
        prev = cur
        del x
    return H


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# Naive per-pair implementations
# ---------------------------------------------------------------------------------------
def naive_cka_pair(X: torch.Tensor, Y: torch.Tensor) -> float:
    X = X.double()
    Y = Y.double()
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    n, f = X.shape
    if f <= n:  # ||Y^T X||_F^2 directly
        xy = (Y.T @ X).square().sum()
        xx = (X.T @ X).square().sum()
        yy = (Y.T @ Y).square().sum()
    else:  # same quantity as tr(Kx Ky) with Kx = X X^T
        Kx = X @ X.T
        Ky = Y @ Y.T
        xy, xx, yy = (Kx * Ky).sum(), (Kx * Kx).sum(), (Ky * Ky).sum()
    return float(xy / torch.sqrt(xx * yy))


def naive_cosine_pair(X: torch.Tensor, Y: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(X.double(), Y.double(), dim=1).mean())


def naive_knn_pair(X: torch.Tensor, Y: torch.Tensor, k: int) -> float:
    def knn(Z):
        Z = torch.nn.functional.normalize(Z.double(), dim=1)
        S = Z @ Z.T
        S.fill_diagonal_(-math.inf)
        return torch.topk(S, k, dim=1).indices

    a, b = knn(X), knn(Y)
    return float((a[:, :, None] == b[:, None, :]).any(2).sum(1).double().mean() / k)


def run_naive(H, fn, pairs):
    vals, total = {}, 0.0
    dev = H.device.type
    for i, j in pairs:
        v, t = timed(lambda i=i, j=j: fn(H[i], H[j]), dev)
        vals[i, j] = v
        total += t
    return vals, total


def pick_pairs(layers: int, limit: int) -> list[tuple[int, int]]:
    pairs = list(itertools.combinations(range(layers), 2))
    if limit <= 0 or limit >= len(pairs):
        return pairs
    idx = np.linspace(0, len(pairs) - 1, limit).round().astype(int)
    return [pairs[i] for i in sorted(set(idx.tolist()))]


def max_diff(mat: np.ndarray, vals: dict) -> float:
    return max(abs(mat[i, j] - v) for (i, j), v in vals.items())


def time_cis(H, args) -> None:
    """Print the time of each default CI next to its point estimate alone."""
    dev, k = args.device, args.k
    _, t_point = timed(lambda: sim.compute_metric("cka_linear", H, {"n_boot": 0}), dev)
    _, t_ci = timed(lambda: sim.compute_metric("cka_linear", H, {"n_boot": 1}), dev)
    print(f"cka_linear: point {t_point:.2f} s, with the jackknife CI {t_ci:.2f} s", flush=True)
    knn = {"ks": (k,), "n_boot": args.n_boot}
    _, t_point = timed(lambda: sim.compute_metric("mutual_knn", H, {**knn, "n_boot": 0}), dev)
    _, t_ci = timed(lambda: sim.compute_metric("mutual_knn", H, knn), dev)
    print(f"mutual_knn (k={k}): point {t_point:.2f} s, with {args.n_boot} half-samples "
          f"{t_ci:.2f} s", flush=True)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2048, help="utterances")
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=10, help="k for mutual k-NN")
    ap.add_argument("--naive-pairs", type=int, default=0, help="time only this many pairs (0=all)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["cka", "cosine", "knn", "ci"])
    ap.add_argument("--n-boot", type=int, default=200, help="half-samples of the k-NN CI")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)

    L, n, F = args.layers, args.n, args.frames * args.dim
    print(
        f"N={n} L={L} F={args.frames}x{args.dim}={F} float32 input "
        f"({L * n * F * 4 / 2**30:.2f} GiB), device={args.device}, "
        f"torch threads={torch.get_num_threads()}",
        flush=True,
    )
    H, t_gen = timed(lambda: make_stack(n, L, F, args.seed, args.device), args.device)
    print(f"generated in {t_gen:.1f} s", flush=True)
    all_pairs = L * (L - 1) // 2
    pairs = pick_pairs(L, args.naive_pairs)
    scale = all_pairs / len(pairs)
    note = "" if len(pairs) == all_pairs else f" (extrapolated from {len(pairs)} pairs)"
    rows = []
    ok = True

    if "cka" not in args.skip:
        cka, t_proj = timed(lambda: sim.cka_matrix(H, "linear"), args.device)
        print(f"cka all-pairs: {t_proj:.2f} s", flush=True)
        t_floor = 0.0
        for layer in range(L):
            Xd = H[layer].double()
            _, t = timed(lambda Xd=Xd: Xd @ Xd.T, args.device)
            t_floor += t
            del Xd
        print(f"floor (L float64 X @ X.T): {t_floor:.2f} s", flush=True)
        vals, t_naive = run_naive(H, naive_cka_pair, pairs)
        t_naive *= scale
        d = max_diff(cka, vals)
        ok &= d < 1e-5
        print(f"cka per-pair{note}: {t_naive:.2f} s, max |diff| = {d:.2e}", flush=True)
        rows.append(("linear CKA", t_proj, t_naive, d, t_floor))

    if "cosine" not in args.skip:
        cos, t_proj = timed(lambda: sim.cosine_matrix(H, "flatten"), args.device)
        vals, t_naive = run_naive(H, naive_cosine_pair, pairs)
        t_naive *= scale
        d = max_diff(cos, vals)
        ok &= d < 1e-5
        print(f"cosine: all-pairs {t_proj:.2f} s, per-pair{note} {t_naive:.2f} s", flush=True)
        rows.append(("cosine (flatten)", t_proj, t_naive, d, None))

    if "knn" not in args.skip:
        k = args.k
        knn, t_proj = timed(lambda: sim.mutual_knn_matrix(H, ks=(k,))[k], args.device)
        vals, t_naive = run_naive(H, lambda X, Y: naive_knn_pair(X, Y, k), pairs)
        t_naive *= scale
        d = max_diff(knn, vals)
        ok &= d < 1e-5
        print(f"mutual kNN: all-pairs {t_proj:.2f} s, per-pair{note} {t_naive:.2f} s", flush=True)
        rows.append((f"mutual kNN (k={k})", t_proj, t_naive, d, None))

    if "ci" not in args.skip:
        time_cis(H, args)
    print()
    print(f"{'metric':<20}{'all-pairs s':>12}{'per-pair s':>12}{'speedup':>9}"
          f"{'floor s':>9}{'vs floor':>9}{'max|diff|':>11}")  # fmt: skip
    for name, tp, tn, d, tf in rows:
        floor = f"{tf:>9.2f}{tp / tf:>8.2f}x" if tf is not None else f"{'-':>9}{'-':>9}"
        print(f"{name:<20}{tp:>12.2f}{tn:>12.2f}{tn / tp:>8.1f}x{floor}{d:>11.1e}")
    if note:
        print(f"per-pair times{note} to all {all_pairs} pairs i<j")
    print("agreement to 1e-5:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
