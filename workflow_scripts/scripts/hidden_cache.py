"""Rule adapter: one forward pass of a fine-tuned model over a split -> hidden-state cache."""

import torch

from workflow_scripts.backbones.run import run_cache
from workflow_scripts.core.rule import RuleContext

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp = snakemake.input
meta = ctx.provenance()
summary = run_cache(ctx.slice, inp.model, inp.manifest, snakemake.params.root,
                    snakemake.output[0], meta, ctx.log.info)  # fmt: skip
ctx.log.info("cache written: %s", summary)
ctx.seal()
