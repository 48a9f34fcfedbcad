"""Rule adapter: one model's blocks for one metric (what a depth-2 mimicker's targets read, so
that a change to another model never reruns this model's mimickers)."""

from workflow_scripts.core.provenance import write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.similarity.report import similarity_tables

ctx = RuleContext(snakemake)
_, blocks = similarity_tables([snakemake.input[0]], ctx.slice)
write_text_atomic(snakemake.output[0], blocks.to_csv(index=False))
ctx.log.info("blocks:\n%s", blocks.to_string())
ctx.seal()
