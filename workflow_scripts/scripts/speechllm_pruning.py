"""Rule adapter: one decoder-pruning cell (workflow_scripts.speechllm.run.pruning_cell)."""

import torch

from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.run import pruning_cell

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp, w = snakemake.input, snakemake.wildcards


def split(name):
    key = f"{name}_features"
    return (inp[key], inp[f"{name}_speech"]) if key in inp.keys() else None


df = pruning_cell(
    ctx.slice,
    sllm=w.sllm,
    task=w.task,
    strategy=w.strategy,
    model_dir=inp.model,
    test=split("testing"),
    calibration=split("validation"),
    train=split("training"),
    log=ctx.log.info,
)
heal = ctx.slice["heal"]
write_parquet(
    df,
    snakemake.output[0],
    ctx.provenance(inputs=dict(inp.items()), seed=heal["seed"] if heal else None),
)
ctx.log.info("\n%s", df[["seed", "n_removed", "removed", "wer", "bleu", "healed_wer"]].to_string())
