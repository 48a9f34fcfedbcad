"""Rule adapter: one decoder-pruning cell and its per-utterance records
(workflow_scripts.speechllm.run.pruning_cell)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.run import pruning_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, w, out = snakemake.input, snakemake.wildcards, snakemake.output


def split(name):
    key = f"{name}_features"
    return (inp[key], inp[f"{name}_speech"]) if key in inp.keys() else None


df, records = pruning_cell(ctx.slice, sllm=w.sllm, task=w.task, strategy=w.strategy,
                           model_dir=inp.model, test=split("testing"),
                           calibration=split("validation"), train=split("training"),
                           log=ctx.log.info)  # fmt: skip
heal = ctx.slice["heal"]
meta = ctx.provenance(seed=heal["seed"] if heal else None)
write_parquet(df, out.cell, meta)
write_parquet(records, out.records, meta)
ctx.log.info("\n%s", df[["seed", "n_removed", "removed", "wer", "bleu", "healed_wer"]].to_string())
ctx.seal()
