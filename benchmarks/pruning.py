"""Benchmark: layer-pruning sweeps with prefix resumption vs the naive approach.

A wav2vec2-base-sized classifier (random weights: hidden 768, 12 blocks, 12 heads, FFN 3072,
the real wav2vec2-base conv front end) is swept over n = 0..L-1 removed blocks for each strategy
in two ways:

* naive: ``remove_layers(model, set)`` + a full forward (``finetune.predict``) per n;
* prefix: ``pruning.sweep_logits`` (front end once per batch, kept-block trie).

Logits must agree to ``--atol`` and the accuracies (random labels) must be identical; the speed
ratio naive/prefix is printed per strategy. The ``backward`` sweep needs the front end and each
block once. The ``forward`` sweep can only share the front end and block 0 (set n keeps blocks
0, n+1, ..., L-1, so no two sets share more than block 0): its gain comes from computing the
conv front end + feature projection once instead of L times, so it is bounded by
(L * front + sum_n (L-n) blocks) / (front + L blocks + sum_n (L-1-n) blocks) (about 2x for
wav2vec2-base on CPU).

Usage: ``python benchmarks/pruning.py [--clips 64] [--layers 12] [--threads 1] [--json out]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import workflow_scripts  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts import pruning
from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.registry import count_parameters, pick_device, small_config

BASE_CONV = dict(
    conv_dim=(512,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
)


def build_model(args):
    from transformers import AutoModelForAudioClassification

    spec = dict(
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        ffn=args.ffn,
        classifier_proj=256,
        pos_conv_kernel=128,
        pos_conv_groups=16,
        **BASE_CONV,
    )
    cfg = small_config(args.arch, spec)
    cfg.num_labels = args.classes
    torch.manual_seed(args.seed)
    return AutoModelForAudioClassification.from_config(cfg).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_sweep(model, audio, sets, device, batch_size):
    t_copy = t_fwd = 0.0
    out = []
    for s in sets:
        t0 = time.perf_counter()
        pruned = pruning.remove_layers(model, s).to(device)
        sync(device)
        t1 = time.perf_counter()
        out.append(predict(pruned, audio, device, batch_size))
        sync(device)
        t_copy += t1 - t0
        t_fwd += time.perf_counter() - t1
        del pruned
    return np.stack(out), t_copy, t_fwd


def prefix_sweep(model, audio, sets, device, batch_size):
    t0 = time.perf_counter()
    out = pruning.sweep_logits(model, audio, sets, device, batch_size)
    sync(device)
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--arch", default="wav2vec2", choices=["wav2vec2", "hubert", "wavlm"])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=3072)
    ap.add_argument("--classes", type=int, default=35)
    ap.add_argument("--strategies", nargs="+", default=["backward", "forward"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model = build_model(args).to(device)
    L = pruning.n_layers(model)
    rng = np.random.default_rng(args.seed)
    audio = rng.normal(size=(args.clips, int(16000 * args.seconds))).astype(np.float32)
    labels = rng.integers(0, args.classes, size=args.clips)
    print(
        f"{args.arch}: {L} blocks, hidden {args.hidden}, {count_parameters(model) / 1e6:.1f} M "
        f"params; {args.clips} clips x {args.seconds:g} s, batch {args.batch_size}, "
        f"device {device}, threads {torch.get_num_threads()}"
    )
    # warm-up (allocator, kernels) outside the timings
    predict(model, audio[: min(2, args.clips)], device, args.batch_size)

    results = []
    for strategy in args.strategies:
        sets = pruning.removal_sets(strategy, L, seed=args.seed)
        naive, t_copy, t_fwd = naive_sweep(model, audio, sets, device, args.batch_size)
        fast, t_fast = prefix_sweep(model, audio, sets, device, args.batch_size)
        diff = float(np.abs(naive - fast).max())
        acc_naive = [accuracy_report(lg, labels, args.classes)["accuracy"] for lg in naive]
        acc_fast = [accuracy_report(lg, labels, args.classes)["accuracy"] for lg in fast]
        same_acc = acc_naive == acc_fast
        t_naive = t_copy + t_fwd
        res = dict(
            strategy=strategy,
            n_sets=len(sets),
            naive_s=t_naive,
            naive_copy_s=t_copy,
            naive_forward_s=t_fwd,
            prefix_s=t_fast,
            speedup=t_naive / t_fast,
            speedup_forward_only=t_fwd / t_fast,
            max_abs_logit_diff=diff,
            accuracies_identical=same_acc,
        )
        results.append(res)
        print(
            f"{strategy:>16}: naive {t_naive:7.2f} s (copy {t_copy:5.2f} + forward {t_fwd:7.2f})"
            f" | prefix {t_fast:7.2f} s | speed-up {res['speedup']:5.2f}x "
            f"({res['speedup_forward_only']:.2f}x without copies) | max |dlogit| {diff:.2e}"
            f" | accuracies identical: {same_acc}"
        )
        if diff > args.atol or not same_acc:
            print(f"MISMATCH for {strategy}", file=sys.stderr)
            return 1
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), results=results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
