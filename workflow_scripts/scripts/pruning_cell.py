"""Rule adapter: one (model, strategy) layer-pruning cell (workflow_scripts.pruning.run), its
per-clip predictions and its headline model(s) (output ``export``:
workflow_scripts.pruning.export)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.pruning.run import LOG_COLUMNS, provenance_seed, run_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, out = snakemake.input, snakemake.output
df, predictions = run_cell(
    ctx.slice,
    model=snakemake.wildcards.model,
    model_dir=inp.model,
    manifest=inp.manifest,
    root=snakemake.params.root,
    cache=inp.get("cache"),
    log=ctx.log.info,
    export_dir=out.get("export"),
)
meta = ctx.provenance(seed=provenance_seed(ctx.slice))
write_parquet(df, out.cell, meta)
write_parquet(predictions, out.predictions, meta)
ctx.log.info("\n%s", df[LOG_COLUMNS].to_string())
ctx.seal()
