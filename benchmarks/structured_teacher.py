"""Cost of computing the structured cells' teacher states in the cell
(``structured.distill.teacher: computed``) instead of reading them from the training cache
(``cached``): seconds per gate-training step of the project's trainer
(``workflow_scripts.structured.train.train_gates``) at real size, both ways, interleaved.

A random-weight architecture of config/architectures.yaml (default wav2vec2-base: 12 x 768),
49 frames per clip, the default distilled layers (L/3, 2L/3, L), every gate kind on. The
cached teacher states are in-memory float16 arrays (no disk read is timed, so the ratio is the
compute overhead alone: an upper bound of the slowdown where reading rows from a large cache
on a shared file system costs time). Not a test: a measurement to read.

    .venv/bin/python benchmarks/structured_teacher.py --batch-size 4 --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workflow_scripts.backbones.architectures import random_model  # noqa: E402
from workflow_scripts.structured.plan import default_distill_layers  # noqa: E402
from workflow_scripts.structured.stack import GatedStack  # noqa: E402
from workflow_scripts.structured.train import ComputedTeacher, train_gates  # noqa: E402

GATES = {"heads": True, "head_dims": True, "ffn_units": True, "layers": False}
FRAMES = 49


def step_seconds(model, x0, targets, steps: int, batch_size: int, device) -> float:
    torch.manual_seed(0)
    stack = GatedStack.from_model(model, gates=GATES)
    t0 = time.perf_counter()
    train_gates(stack, x0, targets, 0.5, steps=steps, batch_size=batch_size, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="facebook/wav2vec2-base")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = random_model(args.model)
    L, D = model.config.num_hidden_layers, model.config.hidden_size
    layers = default_distill_layers(L)
    rng = np.random.default_rng(0)
    n = 4 * args.batch_size
    x0 = rng.standard_normal((n, FRAMES, D)).astype(np.float16)
    cached = {i: rng.standard_normal((n, FRAMES, D)).astype(np.float16) for i in layers}
    computed = ComputedTeacher(model, layers)
    step_seconds(model, x0, cached, 1, args.batch_size, device)  # warm-up
    times: dict[str, list[float]] = {"cached": [], "computed": []}
    for _ in range(args.repeats):  # interleaved: both ways see the same machine load
        times["cached"].append(step_seconds(model, x0, cached, args.steps, args.batch_size,
                                            device))  # fmt: skip
        times["computed"].append(step_seconds(model, x0, computed, args.steps, args.batch_size,
                                              device))  # fmt: skip
    # the added work alone: the teacher's forward pass of one mini-batch
    x = torch.from_numpy(x0[: args.batch_size].astype(np.float32)).to(device)
    computed.to(device)
    forward = []
    for _ in range(args.repeats * args.steps):
        t0 = time.perf_counter()
        computed(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        forward.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [c / a for a, c in zip(times["cached"], times["computed"], strict=True)]
    print(f"{args.model} (L = {L}, D = {D}), batch {args.batch_size}, {args.steps} steps x "
          f"{args.repeats} repeats, device {device}, {args.threads} thread(s)")  # fmt: skip
    for k, v in times.items():
        print(f"  {k:8s} s/step: median {med[k]:.3f} (runs {', '.join(f'{t:.3f}' for t in v)})")
    print(f"  teacher forward alone: median {statistics.median(forward):.3f} s per batch "
          f"({statistics.median(forward) / med['cached']:.0%} of a cached step)")  # fmt: skip
    print(f"  computed / cached: median {statistics.median(ratios):.2f} "
          f"(runs {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip


if __name__ == "__main__":
    main()
