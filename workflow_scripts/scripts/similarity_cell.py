"""Rule adapter: one (model, metric) similarity cell from the hidden-state cache
(workflow_scripts.similarity.run)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.similarity.run import run_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cache = snakemake.input.cache
df = run_cell(cache, ctx.slice, ctx.log.info, model=snakemake.wildcards.model)
meta = ctx.provenance(seed=ctx.slice["seed"])
write_parquet(df, snakemake.output[0], meta)
ctx.log.info("%d rows", len(df))
ctx.seal()
