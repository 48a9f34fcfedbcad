"""The training-split cache as planned now (only the states its readers need, the mimickers'
block targets resolved from the blocks table) against an all-states training cache of a
finished default run: the same float16 rows of every state it stores, and the same mimic cell.

Reads a results folder of the default grid made before the change (every state in the
training caches), writes the planned cache of one model with the cache job's code
(``backbones.run.run_cache``) to a temporary folder, compares the stored tensors bit for bit
and runs the depth-2 mimic cell (target from the blocks) from both caches. Not a test: a
check on real default-grid files (``tests/test_cache_store.py`` proves it on a tiny world).

    .venv/bin/python benchmarks/reduced_cache_check.py ../run2/results --model hubert-small
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workflow_scripts import grid  # noqa: E402
from workflow_scripts.backbones import cache_plan  # noqa: E402
from workflow_scripts.backbones.cachefile import CacheFile  # noqa: E402
from workflow_scripts.backbones.run import run_cache  # noqa: E402
from workflow_scripts.core import paths  # noqa: E402
from workflow_scripts.data.plan import data_root  # noqa: E402
from workflow_scripts.mimic import plan as mplan  # noqa: E402
from workflow_scripts.mimic.run import run_cell  # noqa: E402
from workflow_scripts.mimic.targets import block_target_states, blocks_of  # noqa: E402

TIMING = ("seconds", "latency", "_ms", "speedup", "timing", "threads", "clock")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a finished default run's results folder")
    ap.add_argument("--model", default="hubert-small")
    ap.add_argument("--kind", default="linear")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = Path(args.results).resolve()
    cfg = grid.validate(yaml.safe_load((res.parent / "config.yaml").read_text()))
    model = args.model
    root = str(res.parent / data_root(cfg, "results"))
    inputs = cache_plan.cache_inputs(cfg, str(res), model=model, split="training")
    slice_ = cache_plan.cache_slice(cfg, model, "training")
    store = slice_["store"]
    blocks = blocks_of(inputs)
    old = CacheFile(paths.path("cache", str(res), model=model, split="training"))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "training.safetensors")

        def picked(n_layers):
            return block_target_states(store["block_targets"], n_layers, model, blocks)

        run_cache(slice_, inputs["model"], inputs["manifest"], root, out, {}, print, picked)
        new = CacheFile(out)
        print(f"stored states: planned {new.states} of the all-states cache's {old.states}; "
              f"{Path(out).stat().st_size:,} bytes vs {old.path.stat().st_size:,}")  # fmt: skip
        assert new.paths == old.paths
        for name in ("labels", "feature_projection", *(["final"] if "final" in new.shapes else [])):
            assert np.array_equal(new.read(name), old.read(name)), name
        for s in new.states:
            assert np.array_equal(new.read_state(s), old.read_state(s)), s
        print("every stored tensor is bit-identical to the all-states cache's")
        cell = mplan.cell_slice(cfg, model, args.kind, 2)
        cell_inputs = mplan.cell_inputs(cfg, str(res), model=model, kind=args.kind, depth=2)
        rows = []
        for train_cache in (out, str(old.path)):
            row, curves, preds = run_cell({**cell_inputs, "train_cache": train_cache}, cell, root,
                                          device="cpu", log=lambda *_: None)  # fmt: skip
            rows.append((row, curves, preds))
        (a, ca, pa), (b, cb, pb) = rows
        keep = [c for c in a.columns if not any(t in c for t in TIMING)]
        pd.testing.assert_frame_equal(a[keep], b[keep])
        keep = [c for c in ca.columns if not any(t in c for t in TIMING)]
        pd.testing.assert_frame_equal(ca[keep], cb[keep])
        pd.testing.assert_frame_equal(pa, pb)
        r = a.iloc[0]
        print(f"{model} {args.kind}-2: target layers {list(r.target_layers)} ({r.target_source}), "
              f"accuracy {r.accuracy:.4f}, stage-1 best val loss {r.stage1_best_val_loss:.6f}: "
              f"the cell row (timings aside), curves and predictions are identical")  # fmt: skip


if __name__ == "__main__":
    main()
