"""Rule adapter: one decoder-similarity cell (workflow_scripts.speechllm.run.similarity_cell)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.run import similarity_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, w = snakemake.input, snakemake.wildcards
df = similarity_cell(ctx.slice, sllm=w.sllm, task=w.task, input_type=w.input,
                     model_dir=inp.model,
                     features=inp.validation_features, speech_dir=inp.validation_speech,
                     log=ctx.log.info)  # fmt: skip
write_parquet(df, snakemake.output[0], ctx.provenance())
ctx.log.info("\n%s", df.head(12).to_string())
ctx.seal()
