"""Hidden-state extraction cost: wall time and peak memory per 1,000 utterances.

A wav2vec2-base-sized architecture (12 layers, 768 wide, the real 7-layer conv front end;
random weights) runs the project's extraction
(`workflow_scripts.backbones.cache.extract_hidden_states`)
over random 1-s clips. Prints seconds and peak resident memory per 1,000 utterances, and the
cache size they produce. Not a test: a measurement to read.

    .venv/bin/python benchmarks/extraction.py --clips 128 --batch-size 32
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workflow_scripts.backbones.cache import extract_hidden_states  # noqa: E402
from workflow_scripts.backbones.registry import pick_device, small_config  # noqa: E402

BASE = {
    "hidden": 768, "layers": 12, "heads": 12, "ffn": 3072,
    "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "pos_conv_kernel": 128, "pos_conv_groups": 16,
}  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForAudioClassification

    cfg = small_config("wav2vec2", BASE)
    cfg.feat_extract_norm = "group"  # as wav2vec2-base
    cfg.num_labels = 35
    model = AutoModelForAudioClassification.from_config(cfg).eval()
    device = pick_device(args.device)
    audio = np.random.default_rng(0).standard_normal((args.clips, 16000)).astype(np.float32)
    rss0 = peak_rss_mb()
    extract_hidden_states(model, audio[: args.batch_size], device, args.batch_size, False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = extract_hidden_states(model, audio, device, args.batch_size, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    size_mb = sum(a.nbytes for a in out.values()) / 2**20
    per_k = 1000 / args.clips
    print(f"device {device}, threads {torch.get_num_threads()}, {args.clips} clips, "
          f"batch {args.batch_size}, hidden_states {out['hidden_states'].shape}")  # fmt: skip
    print(f"wall time per 1,000 utterances: {secs * per_k:8.1f} s")
    print(f"peak RSS (process): {peak_rss_mb():8.0f} MB (before extraction {rss0:.0f} MB)")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:8.0f} MB")
    print(f"cache size per 1,000 utterances: {size_mb * per_k:8.0f} MB (float16)")


if __name__ == "__main__":
    main()
