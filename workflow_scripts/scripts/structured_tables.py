"""Rule adapter: stack the structured-pruning cells into a table and draw the comparison chart
(accuracy vs parameters: structured pruning, layer pruning and mimickers, one panel per
model), reading the other stages' tables when they are enabled
(workflow_scripts.structured.report.stage_tables)."""

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.report.charts import comparison_chart, save_chart
from workflow_scripts.structured.plan import COMPARED_STAGES
from workflow_scripts.structured.report import stage_tables, summary_display, summary_markdown

ctx = RuleContext(snakemake)
inp, out = snakemake.input, snakemake.output
others = {k: inp[k] for k in COMPARED_STAGES if k in inp.keys()}
t = stage_tables(list(inp.cells), others, ctx.slice["threshold"])
meta = ctx.provenance()
write_parquet(t["table"], out.table, meta)
write_text_atomic(out.csv, summary_display(t["summary"]).to_csv(index=False))
write_text_atomic(out.md, summary_markdown(t["summary"]))
ctx.log.info("summary:\n%s", t["summary"].to_string())
ctx.log.info("comparison: %d points from %s", len(t["comparison"]), ["structured", *others])
save_chart(comparison_chart(t["comparison"]), out.comparison_html, out.comparison_png)
ctx.seal()
