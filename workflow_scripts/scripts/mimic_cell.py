"""Rule adapter: one mimic cell (model x mimicker type x depth), trained from the caches
(workflow_scripts.mimic.run.run_cell); writes the cell, its training curves, its per-clip
test predictions and the exported mimicked model (output ``export``)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.mimic.run import run_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, out = snakemake.input, snakemake.output
cell, curves, preds = run_cell(dict(inp.items()), ctx.slice, snakemake.params.root,
                               log=ctx.log.info, export_dir=out.get("export"))  # fmt: skip
meta = ctx.provenance(seed=ctx.slice["seed"])
write_parquet(cell, out.cell, meta)
write_parquet(curves, out.curves, meta)
write_parquet(preds, out.predictions, meta)
ctx.seal()
