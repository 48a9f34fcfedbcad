"""Rule adapter: one healing cell - the healed n = 0 control or joint multi-task healing - and
its per-utterance records (workflow_scripts.speechllm.healing.heal_cell)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.healing import heal_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, w, out = snakemake.input, snakemake.wildcards, snakemake.output
df, records = heal_cell(ctx.slice, sllm=w.sllm, healing=w.healing, model_dir=inp.model,
                        test=(inp.testing_features, inp.testing_speech),
                        train=(inp.training_features, inp.training_speech),
                        pruning=inp.get("pruning"), log=ctx.log.info)  # fmt: skip
meta = ctx.provenance(seed=ctx.slice["heal"]["seed"])
write_parquet(df, out.cell, meta)
write_parquet(records, out.records, meta)
ctx.log.info("\n%s", df[["task", "healing", "seed", "n_removed", "wer", "healed_wer"]].to_string())
ctx.seal()
