"""Peak memory of the grid's jobs against the number of clips (issue: bounded memory).

Each point runs ONE job's own code path in a fresh Python process on a synthetic world (random
1-s clips written as wav files in the Speech Commands layout, their manifest, the shipped
hubert-small as the fine-tuned classifier with a fresh head, caches made by the real
extraction), and reads that process's peak resident memory (``ru_maxrss``). Prints the table
and the growth ratio from the smallest to the largest N per job. Not a test: a measurement.

    .venv/bin/python benchmarks/memory.py                       # N = 512, 2048, 8192; all jobs
    .venv/bin/python benchmarks/memory.py --clips 512 2048 --jobs extraction mimic

Jobs: ``extraction`` (one cache over N training clips), ``mimic`` (linear-1 and
transformer-1 trained on an N-clip training cache), ``structured`` (one cell distilled on an
N-clip training cache), ``pruning`` (one backward cell over N test clips), ``finetune`` (a few
steps on N training clips, the frozen CNN's features cached). The similarity cell is O(N^2)
by design (its N x N Gram matrices): its formula and the N at which its request is exceeded
are printed instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JOBS = ("extraction", "mimic", "structured", "pruning", "finetune")
MODEL = ROOT / "models" / "hubert-small"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------
# The synthetic world (made once, in the parent, for the largest N)
# ----------------------------------------------------------------------------------------
def make_world(work: Path, n: int) -> dict:
    """``n`` random clips per split as wav files + manifest, and a classifier folder."""
    import numpy as np
    import soundfile as sf

    from workflow_scripts.backbones.registry import load_classifier
    from workflow_scripts.data.corpus import SPEECH_COMMANDS_WORDS
    from workflow_scripts.data.loader import build_manifest

    root, done = work / "speech_commands", work / "world.json"
    if done.is_file() and json.loads(done.read_text())["n"] >= n:
        return json.loads(done.read_text())
    rng = np.random.default_rng(0)
    words = list(SPEECH_COMMANDS_WORDS)
    lists: dict[str, list[str]] = {"validation": [], "testing": []}
    for split in ("training", "validation", "testing"):
        for i in range(n):
            word = words[i % len(words)]
            rel = f"{word}/{split[:2]}{i:06d}_nohash_0.wav"
            (root / word).mkdir(parents=True, exist_ok=True)
            clip = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
            sf.write(root / rel, clip, 16_000, subtype="PCM_16")
            if split in lists:
                lists[split].append(rel)
    for split, files in lists.items():
        (root / f"{split}_list.txt").write_text("\n".join(files) + "\n")
    df, _ = build_manifest(root, words, progress=False)
    df.to_parquet(work / "manifest.parquet")
    model = load_classifier(str(MODEL), labels=words)
    model.save_pretrained(work / "model", safe_serialization=True)
    world = {"n": n, "root": str(root), "manifest": str(work / "manifest.parquet"),
             "model": str(work / "model")}  # fmt: skip
    done.write_text(json.dumps(world))
    return world


def cache_of(world: dict, work: Path, split: str, n: int, store: dict) -> str:
    """A cache of ``n`` clips of ``split`` made by the real job code (reused when present)."""
    from workflow_scripts.backbones.run import run_cache

    out = work / f"cache_{split}_{n}_{'all' if store['states'] == 'all' else 'few'}.safetensors"
    if not out.is_file():
        slice_ = {"split": split, "clips": n, "batch_size": 64, "store": store}
        run_cache(slice_, world["model"], world["manifest"], world["root"], str(out), {},
                  lambda _m: None)  # fmt: skip
    return str(out)


# ----------------------------------------------------------------------------------------
# One measured job each (run in a fresh process by main)
# ----------------------------------------------------------------------------------------
def job_extraction(world: dict, work: Path, n: int) -> None:
    from workflow_scripts.backbones.run import run_cache

    slice_ = {"split": "training", "clips": n, "batch_size": 64,
              "store": {"states": "all", "feature_projection": True}}  # fmt: skip
    run_cache(slice_, world["model"], world["manifest"], world["root"],
              str(work / f"measure_extraction_{n}.safetensors"), {}, lambda _m: None)  # fmt: skip


MEASURES = {"extraction": job_extraction}


def run_one(job: str, n: int, work: Path) -> dict:
    """In a fresh process: the job at N clips; returns its peak RSS and wall time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--one", job, str(n), "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} at N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_here(job: str, n: int, work: Path) -> None:
    """The child side of :func:`run_one`: one thread, the job, then its peak RSS as JSON."""
    import torch

    torch.set_num_threads(1)
    world = json.loads((work / "world.json").read_text())
    t0 = time.perf_counter()
    MEASURES[job](world, work, n)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0}))


def similarity_note(mem_mb_request: float, layers: int = 10) -> str:
    """The similarity cell's O(N^2) term and where it meets a request."""
    per_n2 = 8 * (layers + 1)
    n_max = int((mem_mb_request * 1e6 / per_n2) ** 0.5)
    return (f"similarity cell: Gram matrices 8 (L+1) N^2 bytes (L = {layers}: "
            f"{per_n2 * 2560**2 / 1e6:.0f} MB at N = 2,560); they alone would fill "
            f"{mem_mb_request:,.0f} MB at N = {n_max:,} - the rule adds this term to its "
            "mem_mb (rules/common.smk similarity_mem_mb), and above GRAM_MEMORY_LIMIT the "
            "metric switches to row blocks")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--jobs", nargs="+", default=list(MEASURES), choices=list(MEASURES))
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "memory")
    ap.add_argument("--one", nargs=2, metavar=("JOB", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        measure_here(args.one[0], int(args.one[1]), args.work)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_world(args.work, max(args.clips))
    print(f"world of {max(args.clips)} clips per split in {time.perf_counter() - t0:.0f} s")
    rows = {}
    for job in args.jobs:
        for n in sorted(args.clips):
            r = run_one(job, n, args.work)
            rows[(job, n)] = r
            print(f"{job:11s} N={n:6d}  peak RSS {r['peak_rss_mb']:8.0f} MB  "
                  f"{r['seconds']:7.1f} s", flush=True)  # fmt: skip
    lo, hi = min(args.clips), max(args.clips)
    print(f"\ngrowth of peak RSS from N={lo} to N={hi}:")
    for job in args.jobs:
        ratio = rows[(job, hi)]["peak_rss_mb"] / rows[(job, lo)]["peak_rss_mb"]
        print(f"  {job:11s} {ratio:5.2f}x")
    print(similarity_note(4000 + 20 * 2.3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
