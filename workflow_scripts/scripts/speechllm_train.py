"""Rule adapter: train one SpeechLLM (workflow_scripts.speechllm.train.train_job)."""

import torch

from workflow_scripts.backbones.pretrain import finalize
from workflow_scripts.core.provenance import config_hash
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.train import train_job

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
s, inp = ctx.slice, snakemake.input
result = train_job(s["train"], s["encoder"], s["decoder"], inp.train, inp.validation,
                   snakemake.output[0], log=ctx.log.info)  # fmt: skip
prov = ctx.provenance(seed=s["train"]["seed"])
prov.update(train_config=s["train"], train_config_hash=config_hash(s), encoder=s["encoder"],
            decoder=s["decoder"], **result["summary"])  # fmt: skip
prov.update(result["digests"])  # the weights' SHA-256, as recorded in the model's config
finalize(result["partial_dir"], snakemake.output[0], prov)
ctx.log.info("done: %s", result["summary"])
ctx.seal()
