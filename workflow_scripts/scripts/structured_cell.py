"""Rule adapter: one (model, target sparsity) structured-pruning cell
(workflow_scripts.structured.core.run_cell)."""

import pandas as pd
import torch

from workflow_scripts.backbones.cache import read_layers
from workflow_scripts.backbones.registry import load_classifier, pick_device
from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.loader import load_split
from workflow_scripts.structured.core import default_distill_layers, run_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cell, inp, out = ctx.slice, snakemake.input, snakemake.output
root = snakemake.params.root
device = pick_device()
model = load_classifier(inp.model).to(device).eval()
L = model.config.num_hidden_layers
layers = cell["distill"]["layers"] or default_distill_layers(L)
bad = [i for i in layers if not 1 <= i <= L]
if bad:
    raise ValueError(f"structured.distill.layers {bad} out of range 1..{L}")
H = read_layers(inp.train_cache, [0, *layers], limit=cell["train_clips"])
x0, teacher = H[0], {i: H[k + 1] for k, i in enumerate(layers)}
manifest = pd.read_parquet(inp.manifest)
audio, labels, _ = load_split(root, manifest, "testing", cell["test_clips"])
ctx.log.info("%s, target %s: %d cached training clips, distilled layers %s, %d test clips, "
             "device %s", snakemake.wildcards.model, cell["target"], len(x0), layers,
             len(audio), device)  # fmt: skip


def train_data():
    x, y, _ = load_split(root, manifest, "training", cell["finetune"]["train_clips"])
    ctx.log.info("short fine-tune on %d training clips", len(x))
    return x, y


row, history = run_cell(model, cell, x0, teacher, audio, labels, device, train_data,
                        out.model_dir, ctx.log.info)  # fmt: skip
df = pd.DataFrame([{"model": snakemake.wildcards.model, **row}])
meta = ctx.provenance(inputs={k: inp[k] for k in inp.keys()}, seed=cell["seed"])
write_parquet(df, out.cell, meta)
ctx.log.info("\n%s", df.drop(columns=["per_class_accuracy"]).T.to_string())
