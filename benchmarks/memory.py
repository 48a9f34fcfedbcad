"""Peak memory of the grid's jobs against the number of clips (issue: bounded memory).

Each point runs ONE job's own code path in a fresh Python process on a synthetic world (random
1-s clips written as wav files in the Speech Commands layout, their manifest, the shipped
hubert-small as the fine-tuned classifier with a fresh head, caches made by the real
extraction), and reads that process's peak resident memory (``ru_maxrss``). Prints the table
and the growth ratio from the smallest to the largest N per job. Not a test: a measurement.

    .venv/bin/python benchmarks/memory.py                       # N = 512, 2048, 8192; all jobs
    .venv/bin/python benchmarks/memory.py --clips 512 2048 --jobs extraction mimic

Jobs: ``extraction`` (one cache over N training clips), ``mimic`` (linear-1 and transformer-1
trained on an N-clip training cache), ``structured`` (one cell distilled on an N-clip training
cache), ``pruning`` (one backward cell over N test clips), ``finetune`` (a few steps on N training
clips, the frozen CNN's features cached), ``speechllm_features`` (the shipped speechllm-hubert's
encoder features of N utterances) and ``speechllm_train`` (a SpeechLLM trained a few steps on N
utterances, their features streamed to scratch); the SpeechLLM world is N random 2-s utterances with
command-language transcripts. The similarity cell is O(N^2) by design (its N x N Gram matrices): its
formula and the N at which its request is exceeded are printed instead.
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

MODEL = ROOT / "models" / "hubert-small"
FIXED = 256  # clips of what does not scale in a job (validation cache, test clips, ...)


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
    for split, count in (("training", n), ("validation", FIXED), ("testing", n)):
        for i in range(count):
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
    # a baseline cell of another clip count: the mimic cell streams its own reference
    import pandas as pd

    pd.DataFrame([{"model": "hubert-small", "split": "testing", "n": -1, "accuracy": 0.5,
                   "ci_lo": 0.4, "ci_hi": 0.6}]).to_parquet(work / "baseline.parquet")  # fmt: skip
    world = {"n": n, "root": str(root), "manifest": str(work / "manifest.parquet"),
             "model": str(work / "model")}  # fmt: skip
    done.write_text(json.dumps(world))
    return world


def cache_of(world: dict, work: Path, split: str, n: int, store: dict) -> str:
    """A cache of ``n`` clips of ``split`` made by the real job code (reused when present)."""
    from workflow_scripts.backbones.run import run_cache
    from workflow_scripts.core.provenance import config_hash

    out = work / f"cache_{split}_{n}_{config_hash(store)}.safetensors"
    if not out.is_file():
        slice_ = {"split": split, "clips": n, "batch_size": 64, "store": store}
        run_cache(slice_, world["model"], world["manifest"], world["root"], str(out), {},
                  lambda _m: None)  # fmt: skip
    return str(out)


# ----------------------------------------------------------------------------------------
# One measured job each (run in a fresh process by main)
# ----------------------------------------------------------------------------------------
def default_config() -> dict:
    import yaml

    from workflow_scripts import grid

    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["models"].setdefault("hubert-small", {"hf": "models/hubert-small"})  # MODEL
    return grid.validate(raw)


def job_extraction(world: dict, work: Path, n: int) -> None:
    """One cache over n training clips, every state stored (the validation layout)."""
    from workflow_scripts.backbones.run import run_cache

    slice_ = {"split": "training", "clips": n, "batch_size": 64,
              "store": {"states": "all", "feature_projection": True}}  # fmt: skip
    run_cache(slice_, world["model"], world["manifest"], world["root"],
              str(work / f"measure_extraction_{n}.safetensors"), {}, lambda _m: None)  # fmt: skip


def _mimic(world: dict, work: Path, n: int, kind: str) -> None:
    """One mimic cell (1 + 1 epochs) fitted on an n-clip training cache."""
    from workflow_scripts.mimic import plan
    from workflow_scripts.mimic.run import run_cell

    few = {"states": ["L"], "feature_projection": True}
    inputs = {"model": world["model"], "baseline": str(work / "baseline.parquet"),
              "train_cache": cache_of(world, work, "training", n, few),
              "val_cache": cache_of(world, work, "validation", FIXED, few),
              "test_cache": cache_of(world, work, "testing", FIXED, few)}  # fmt: skip
    sl = plan.cell_slice(default_config(), "hubert-small", kind, "1")
    sl["stage1"]["epochs"] = sl["stage2"]["epochs"] = 1
    run_cell(inputs, sl, world["root"], "cpu", lambda *_a, **_k: None)


def job_mimic_linear(world: dict, work: Path, n: int) -> None:
    _mimic(world, work, n, "linear")


def job_mimic_transformer(world: dict, work: Path, n: int) -> None:
    _mimic(world, work, n, "transformer")


def job_structured(world: dict, work: Path, n: int) -> None:
    """One structured cell (20 steps) distilled on an n-clip training cache."""
    from workflow_scripts.structured import plan
    from workflow_scripts.structured.run import run_cell

    store = {"states": [0, "L/3", "2L/3", "L"], "feature_projection": False}
    inputs = {"model": world["model"], "manifest": world["manifest"],
              "train_cache": cache_of(world, work, "training", n, store)}  # fmt: skip
    sl = plan.cell_slice(default_config(), model="hubert-small", sparsity="0.3")
    sl.update(steps=20, train_clips=None, test_clips=FIXED)
    run_cell(inputs, sl, world["root"], model="hubert-small", out_dir=work / f"pruned_{n}",
             log=lambda *_a, **_k: None)  # fmt: skip


def job_pruning(world: dict, work: Path, n: int) -> None:
    """One backward pruning cell (latency off) over n test clips."""
    from workflow_scripts.pruning import plan
    from workflow_scripts.pruning.run import run_cell

    cfg = default_config()
    cfg["pruning"]["strategies"] = {"backward": {}}
    cell = plan.cell_slice(cfg, strategy="backward", model="hubert-small")
    cell.update(test_clips=n, latency={"enabled": False})
    run_cell(
        cell,
        model="hubert-small",
        model_dir=world["model"],
        manifest=world["manifest"],
        root=world["root"],
        device="cpu",
    )


def job_finetune(world: dict, work: Path, n: int) -> None:
    """Fine-tuning (frozen-CNN features cached, 10 steps) on n training clips."""
    import shutil

    from workflow_scripts.backbones.plan import finetune_slice
    from workflow_scripts.backbones.run import run_finetune

    cfg = default_config()
    cfg["models"] = {"hubert-small": {"hf": str(MODEL)}}
    sl = finetune_slice(cfg, "hubert-small")
    sl["finetune"].update(steps=10, eval_clips=64)
    sl["test_clips"] = 64
    shutil.rmtree(work / f"finetune_{n}", ignore_errors=True)
    limited = work / f"manifest_train_{n}.parquet"
    _manifest_with_training(world, n, limited)
    run_finetune(sl, "hubert-small", str(limited), world["root"], str(work / f"finetune_{n}"),
                 lambda _m: None)  # fmt: skip


def _manifest_with_training(world: dict, n: int, out: Path) -> None:
    """The world's manifest with only the first n training clips usable."""
    import pandas as pd

    df = pd.read_parquet(world["manifest"])
    train = df.index[df.split == "training"]
    df.loc[train[n:], "usable"] = False
    df.to_parquet(out)


def speech_world(work: Path, n: int) -> Path:
    """A SpeechLLM speech folder of n random 2-s utterances (the manifest layout of
    :mod:`workflow_scripts.speechllm.speech`), made once per n."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    from workflow_scripts.speechllm.speech import MANIFEST
    from workflow_scripts.speechllm.text import translate

    folder = work / f"speech_{n}"
    if (folder / MANIFEST).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng, texts = np.random.default_rng(1), ["go left", "marvin go up", "turn on the bed"]
    rows = []
    for i in range(n):
        sf.write(folder / f"{i:05d}.wav", (0.1 * rng.standard_normal(32_000)).astype(np.float32),
                 16_000, subtype="PCM_16")  # fmt: skip
        text = texts[i % len(texts)]
        rows.append({"path": f"{i:05d}.wav", "text": text, "translation": translate(text)})
    pd.DataFrame(rows).to_parquet(folder / MANIFEST, index=False)
    return folder


def job_speechllm_features(world: dict, work: Path, n: int) -> None:
    """The features job of the shipped speechllm-hubert over n utterances."""
    from workflow_scripts.speechllm.run import write_features

    write_features(str(ROOT / "models" / "speechllm-hubert"), str(speech_world(work, n)),
                   str(work / f"speechllm_features_{n}.safetensors"), progress=False)  # fmt: skip


def job_speechllm_train(world: dict, work: Path, n: int) -> None:
    """SpeechLLM training (10 steps) on n utterances: encoder features streamed to scratch."""
    import shutil

    from workflow_scripts.speechllm.train import train_job

    spec = {"encoder": "hubert-small", "decoder": "decoder-small", "encoder_layer": 5,
            "tasks": ["asr"], "steps": 10, "batch_size": 8, "seed": 0}  # fmt: skip
    out = work / f"speechllm_{n}"
    res = train_job(spec, str(ROOT / "models" / "hubert-small"),
                    str(ROOT / "models" / "decoder-small"), str(speech_world(work, n)),
                    str(speech_world(work, 16)), str(out), log=lambda _m: None,
                    progress=False)  # fmt: skip
    shutil.rmtree(res["partial_dir"], ignore_errors=True)


MEASURES = {
    "extraction": job_extraction, "mimic_linear": job_mimic_linear,
    "mimic_transformer": job_mimic_transformer, "structured": job_structured,
    "pruning": job_pruning, "finetune": job_finetune,
    "speechllm_features": job_speechllm_features, "speechllm_train": job_speechllm_train,
}  # fmt: skip


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
    if any(j.startswith("speechllm") for j in args.jobs):
        for n in [16, *args.clips]:
            speech_world(args.work, n)
    print(f"world of {max(args.clips)} clips per split in {time.perf_counter() - t0:.0f} s")
    rows = {}
    for job in args.jobs:
        for n in sorted(args.clips):
            r = run_one(job, n, args.work)
            rows[(job, n)] = r
            print(f"{job:18s} N={n:6d}  peak RSS {r['peak_rss_mb']:8.0f} MB  "
                  f"{r['seconds']:7.1f} s", flush=True)  # fmt: skip
    lo, hi = min(args.clips), max(args.clips)
    print(f"\ngrowth of peak RSS from N={lo} to N={hi}:")
    for job in args.jobs:
        ratio = rows[(job, hi)]["peak_rss_mb"] / rows[(job, lo)]["peak_rss_mb"]
        print(f"  {job:18s} {ratio:5.2f}x")
    print(similarity_note(4000 + 20 * 2.3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
