"""Rule adapter: fine-tune one backbone on the keyword task and write its baseline cell."""

import json

import pandas as pd
import torch

from workflow_scripts.backbones.finetune import (
    accuracy_report,
    predict,
    save_model,
    train_classifier,
)
from workflow_scripts.backbones.registry import (
    count_parameters,
    encoder_of,
    load_classifier,
    pick_device,
)
from workflow_scripts.core.provenance import canonical_json, write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.loader import load_split, manifest_digest

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cell, spec = ctx.slice, ctx.slice["finetune"]
labels = cell["labels"]
root = snakemake.params.root
manifest = pd.read_parquet(snakemake.input.manifest)
audio, y, _ = load_split(root, manifest, "training")
ctx.log.info("fine-tuning %s on %d clips, %d classes", cell["source"], len(audio), len(labels))
torch.manual_seed(spec["seed"])  # the fresh head's initialisation is part of the cell
model = load_classifier(cell["source"], labels=labels)
device = pick_device()
result = train_classifier(model, audio, y, spec, device, snakemake.params.work, ctx.log.info)
del audio
base = encoder_of(model)
params = {
    "params_total": count_parameters(model),
    "params_transformer": count_parameters(base.encoder),
    "params_feature_encoder": count_parameters(base.feature_extractor),
    "params_head": count_parameters(model.projector) + count_parameters(model.classifier),
}
rows = []
for split in ("validation", "testing"):
    x, yy, _ = load_split(root, manifest, split, spec.get("eval_clips"))
    report = accuracy_report(predict(model, x, device), yy, len(labels))
    ctx.log.info("%s accuracy %.4f (n=%d)", split, report["accuracy"], report["n"])
    rows.append({"model": snakemake.wildcards.model, "split": split, **report, **params,
                 "num_layers": model.config.num_hidden_layers,
                 "finetune_seconds": result["seconds"], "finetune_steps": spec["steps"],
                 "resumed_from_step": result["resumed_from"], "device": str(device)})  # fmt: skip
df = pd.DataFrame(rows)
df["labels"] = [labels] * len(df)
meta = ctx.provenance(seed=spec["seed"])
meta["inputs_sha256"] = canonical_json({"data": manifest_digest(manifest),
                                         **json.loads(meta["inputs_sha256"])})  # fmt: skip
save_model(model, snakemake.output.model, {
    "provenance.json": json.dumps(meta, indent=1, sort_keys=True),
    "training_history.json": json.dumps(result["history"]),
})  # fmt: skip
write_parquet(df, snakemake.output.baseline, meta)
