"""Rule adapter: one (model, strategy) layer-pruning cell (workflow_scripts.pruning.cells)."""

import pandas as pd
import torch

from workflow_scripts.backbones.cache import read_layers
from workflow_scripts.backbones.registry import load_classifier, pick_device
from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.loader import load_split
from workflow_scripts.pruning.cells import CACHE_STRATEGIES, run_cell, scores_from_cache
from workflow_scripts.pruning.core import SimilarityEvaluator

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cell, inp = ctx.slice, snakemake.input
strategy, settings = cell["strategy"], cell["settings"]
root = snakemake.params.root
manifest = pd.read_parquet(inp.manifest)
device = pick_device()
model = load_classifier(inp.model).to(device).eval()
audio, labels, _ = load_split(root, manifest, "testing", cell["test_clips"])
ctx.log.info("%s / %s: %d test clips, device %s", snakemake.wildcards.model, strategy,
             len(audio), device)  # fmt: skip

scores = evaluator = n_cal = None
if strategy in CACHE_STRATEGIES:  # calibration = the validation split's hidden-state cache
    H = read_layers(inp.cache, limit=cell["calibration_clips"])
    scores = scores_from_cache(strategy, H, settings)
    n_cal = H.shape[1]
    ctx.log.info("scores from %d validation clips: %s", n_cal, scores)
    del H
elif strategy == "similarity_greedy":  # calibration = validation clips through the model
    x_val, _, _ = load_split(root, manifest, "validation", settings["clips"])
    n_cal = len(x_val)
    evaluator = SimilarityEvaluator(model, x_val, device, settings["batch_size"],
                                    settings["metric"])  # fmt: skip


def train_data():
    x, y, _ = load_split(root, manifest, "training", cell["heal"]["train_clips"])
    ctx.log.info("healing on %d training clips", len(x))
    return x, y


df = run_cell(model, cell, audio, labels, device, scores, evaluator, train_data, ctx.log.info)
df.insert(0, "model", snakemake.wildcards.model)
df["calibration_clips"] = pd.array([n_cal] * len(df), dtype="Int64")  # null: no scores
if "seeds" in settings:  # random: the removal orders' seeds (the heal seed is in the cell)
    seed = ",".join(map(str, settings["seeds"]))
else:
    seed = cell["heal"]["seed"] if cell["heal"] else None
meta = ctx.provenance(inputs={k: inp[k] for k in inp.keys()}, seed=seed)
write_parquet(df, snakemake.output[0], meta)
ctx.log.info("\n%s", df[["seed", "n_removed", "removed", "accuracy", "relative_accuracy",
                         "total_params", "latency_ms", "healed_accuracy"]].to_string())  # fmt: skip
