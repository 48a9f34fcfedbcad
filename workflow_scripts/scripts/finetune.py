"""Rule adapter: fine-tune one backbone on the keyword task and write its baseline cell and
its per-clip test predictions."""

import torch

from workflow_scripts.backbones.run import run_finetune, save_finetuned
from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, out, params = snakemake.input, snakemake.output, snakemake.params
model, df, history, preds = run_finetune(ctx.slice, snakemake.wildcards.model, inp.manifest,
                                         params.root, params.work, ctx.log.info)  # fmt: skip
meta = ctx.provenance(seed=ctx.slice["finetune"]["seed"])
meta = save_finetuned(model, out.model, meta, inp.manifest, history, params.work)
write_parquet(df, out.baseline, meta)
write_parquet(preds, out.predictions, meta)
ctx.seal()
