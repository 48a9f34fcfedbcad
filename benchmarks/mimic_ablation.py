"""What the mimicker's accuracy on the default depends on: an ablation on one model's caches.

Runs the mimic cell's own code (``workflow_scripts.mimic.run.run_cell``) for a transformer-1
(or any) mimicker with one factor changed at a time - training clips, the feed-forward width,
positional information, epochs - and prints one row per point: validation accuracy (what a
setting would be chosen on), test accuracy on the evaluation set and its share of the
backbone's, the stack's parameter reduction and the training time. Not a test: a measurement.

Needs a finished default run's results (fine-tuned model, caches, blocks) and a training cache
with as many clips as the largest point asks for, e.g. (cache of every training clip):

    .venv/bin/snakemake --profile profiles/local --config 'cache={"train_clips": null}'
    .venv/bin/python benchmarks/mimic_ablation.py --model hubert-small

Points are ``name:JSON`` (keys ``clips``, ``kind``, ``depth``, ``layer`` / ``stage1`` /
``stage2`` merged into the cell's slice); without ``--points`` the default list below.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POINTS = {
    "default (1,024 clips, FFN 64, no positions, 50+30 epochs)": {"clips": 1024},
    "FFN 256": {"clips": 1024, "layer": {"ffn": 256}},
    "positions: conv": {"clips": 1024, "layer": {"positions": "conv"}},
    "positions: sinusoidal": {"clips": 1024, "layer": {"positions": "sinusoidal"}},
    "epochs 25+15": {"clips": 1024, "stage1": {"epochs": 25}, "stage2": {"epochs": 15}},
    "4,096 clips": {"clips": 4096},
    "all clips": {"clips": None},
    "all clips + FFN 256 + conv": {"clips": None, "layer": {"ffn": 256, "positions": "conv"}},
}


def run_point(cfg: dict, results: str, model: str, name: str, ov: dict) -> dict:
    import torch

    from workflow_scripts.mimic import plan
    from workflow_scripts.mimic import run as mrun

    kind, depth = ov.get("kind", "transformer"), int(ov.get("depth", 1))
    s = plan.cell_slice(cfg, model, kind, depth)
    for key in ("layer", "stage1", "stage2"):
        s[key] = {**s.get(key, {}), **ov.get(key, {})}
    inputs = plan.cell_inputs(cfg, results, model=model, kind=kind, depth=depth)
    root = f"{results}/corpus/speech_commands_v0.02"
    torch.set_num_threads(1)
    t0 = time.time()
    row, *_ = mrun.run_cell(inputs, s, root, device="cpu", log=lambda *a: None,
                           train_clips=ov.get("clips"))  # fmt: skip
    r = row.iloc[0]
    return {"point": name, "overrides": ov, "train_clips": int(r.train_clips),
            "val_accuracy": float(r.val_accuracy), "accuracy": float(r.accuracy),
            "retained": float(r.accuracy_retained),
            "stack_reduction_pct": float(r.stack_param_reduction_pct),
            "mimicker_params": int(r.mimicker_params), "seconds": time.time() - t0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--model", default="hubert-small")
    ap.add_argument("--points", nargs="+", help="name:JSON overrides (default: the list above)")
    ap.add_argument("--out", type=Path, help="also append one JSON line per point here")
    args = ap.parse_args(argv)
    import yaml

    from workflow_scripts.core.config import validate_config

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["models"] = {args.model: cfg["models"][args.model]}
    cfg = validate_config(cfg)
    points = dict(p.split(":", 1) for p in args.points) if args.points else None
    points = {k: json.loads(v) for k, v in points.items()} if points else POINTS
    print("| point | train clips | val acc | test acc | retained | stack params cut | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ov in points.items():
        rec = run_point(cfg, args.results, args.model, name, ov)
        cells = [name, f"{rec['train_clips']:,}", f"{rec['val_accuracy']:.3f}",
                 f"{rec['accuracy']:.3f}", f"{rec['retained']:.1%}",
                 f"{rec['stack_reduction_pct']:.1f}%", f"{rec['seconds']:.0f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
