"""Rule adapter: pretrain one small backbone (see workflow_scripts.backbones.pretrain)."""

import pandas as pd
import torch

from workflow_scripts.backbones.pretrain import finalize, pretrain
from workflow_scripts.backbones.registry import pick_device
from workflow_scripts.core.provenance import config_hash
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.loader import load_split, manifest_digest

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
spec = ctx.slice
manifest = pd.read_parquet(snakemake.input.manifest)
audio, _, _ = load_split(snakemake.params.root, manifest, "training", spec.get("train_clips"))
ctx.log.info("pretraining %s on %d training clips", spec["arch"], len(audio))
device = pick_device()
result = pretrain(audio, spec, snakemake.output[0], snakemake.params.work, device, log=ctx.log.info)
prov = ctx.provenance(seed=spec.get("seed", 0))
prov.update(
    pretrain_config=spec,
    pretrain_config_hash=config_hash(spec),
    corpus_sha256=manifest_digest(manifest),
    training_clips=len(audio),
    **result["summary"],
)
finalize(result["partial_dir"], snakemake.output[0], prov)
ctx.log.info("done: %s", result["summary"])
ctx.seal()
