"""Rule adapter: one (model, target sparsity) structured-pruning cell, its per-clip test
predictions and its pruned model (workflow_scripts.structured.run.run_cell)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.structured.run import run_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, out = snakemake.input, snakemake.output
inputs = {k: inp[k] for k in inp.keys()}
df, preds = run_cell(inputs, ctx.slice, snakemake.params.root, model=snakemake.wildcards.model,
                     out_dir=out.model_dir, log=ctx.log.info)  # fmt: skip
meta = ctx.provenance(inputs=inputs, seed=ctx.slice["seed"])
write_parquet(df, out.cell, meta)
write_parquet(preds, out.predictions, meta)
ctx.seal()
