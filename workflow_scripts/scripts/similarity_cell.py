"""Rule adapter: one (model, metric) similarity cell from the hidden-state cache."""

import json

import pandas as pd
import torch

from workflow_scripts.backbones.cache import read_layers
from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.similarity.metrics import compute_metric, to_long_rows

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cell = ctx.slice
H = read_layers(snakemake.input.cache, limit=cell["clips"])
ctx.log.info("layers x utterances x frames x dims: %s", H.shape)
params = {**cell["params"], "n_boot": cell["n_boot"], "seed": cell["seed"]}
result = compute_metric(cell["metric"], H, params)
df = pd.DataFrame(to_long_rows(cell["metric"], result))
df.insert(0, "model", snakemake.wildcards.model)
df["k"] = df["k"].astype("Int64")
df["n_utterances"] = result["n_utterances"]
df["higher_is_similar"] = result["higher_is_similar"]
df["params"] = json.dumps(result["params"], sort_keys=True, default=list)
meta = ctx.provenance(inputs={"cache": snakemake.input.cache}, seed=cell["seed"])
write_parquet(df, snakemake.output[0], meta)
ctx.log.info("%d rows", len(df))
