"""Rule adapter: a SpeechLLM's frozen-encoder features of one speech split
(workflow_scripts.speechllm.run.write_features)."""

import torch

from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.run import write_features

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
model_dir = snakemake.input.model
n = write_features(model_dir, snakemake.input.speech, snakemake.output[0], log=ctx.log.info)
ctx.log.info("%d utterances of %s", n, ctx.slice["split"])
ctx.seal()
