"""Rule adapter: one forward pass of a fine-tuned model over a split -> hidden-state cache."""

import pandas as pd
import torch

from workflow_scripts.backbones.cache import extract_hidden_states, write_cache
from workflow_scripts.backbones.registry import load_classifier, pick_device
from workflow_scripts.core.provenance import config_hash, sha256_path
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.loader import load_split

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cell = ctx.slice
manifest = pd.read_parquet(snakemake.input.manifest)
audio, y, paths = load_split(snakemake.params.root, manifest, cell["split"], cell["clips"])
model = load_classifier(snakemake.input.model)
device = pick_device()
arrays = extract_hidden_states(model, audio, device, cell["batch_size"])
ctx.log.info("cache shapes %s", {k: v.shape for k, v in arrays.items()})
meta = ctx.provenance(inputs={"model": snakemake.input.model})
meta["slice_hash"] = config_hash(cell)
meta["model_sha256"] = sha256_path(snakemake.input.model)
write_cache(snakemake.output[0], arrays, y, paths, meta)
