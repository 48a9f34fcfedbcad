"""Rule adapter: one forward pass of a fine-tuned model over a split -> hidden-state cache.
With the mimickers' block targets in the slice (training split), the intermediate layers the
mimic cells will pick from the blocks tables (inputs ``blocks_{metric}``) are stored too."""

import importlib

import torch

from workflow_scripts.backbones.run import run_cache
from workflow_scripts.core.rule import RuleContext

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
inp = snakemake.input
meta = ctx.provenance()
block_targets = ctx.slice["store"].get("block_targets", [])


def picked(n_layers: int) -> list[int]:
    # loaded by name: planned into these jobs' code only (backbones.cache_plan.cache_modules)
    targets = importlib.import_module("workflow_scripts.mimic.targets")
    return targets.block_target_states(block_targets, n_layers, snakemake.wildcards.model,
                                       targets.blocks_of(inp))  # fmt: skip


summary = run_cache(ctx.slice, inp.model, inp.manifest, snakemake.params.root,
                    snakemake.output[0], meta, ctx.log.info, picked)  # fmt: skip
ctx.log.info("cache written: %s", summary)
ctx.seal()
