"""Rule adapter: text pretraining of one small decoder (workflow_scripts.speechllm.pretrain)."""

import torch

from workflow_scripts.backbones.pretrain import finalize
from workflow_scripts.core.provenance import config_hash
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.pretrain import pretrain_decoder

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
spec, text_cfg = ctx.slice["pretrain"], ctx.slice["text"]
result = pretrain_decoder(spec, text_cfg, snakemake.output[0], log=ctx.log.info)
prov = ctx.provenance(seed=spec.get("seed", 0))
prov.update(pretrain_config=spec, pretrain_config_hash=config_hash(ctx.slice), text=text_cfg,
            **result["summary"])  # fmt: skip
finalize(result["partial_dir"], snakemake.output[0], prov)
ctx.log.info("done: %s", result["summary"])
ctx.seal()
