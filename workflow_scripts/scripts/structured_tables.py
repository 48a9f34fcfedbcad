"""Rule adapter: stack the structured-pruning cells into a table and draw the comparison chart
(accuracy vs parameters: structured pruning, layer pruning and mimickers, one panel per
model), reading the other stages' tables when they are enabled."""

import pandas as pd

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.core.tables import concat_cells
from workflow_scripts.report.charts import comparison_chart, save_chart
from workflow_scripts.structured.cells import comparison_long, markdown_table, summary_table

ctx = RuleContext(snakemake)
inp, out = snakemake.input, snakemake.output
df = concat_cells(list(inp.cells))
summary = summary_table(df)
meta = ctx.provenance(inputs={f"cell{i}": p for i, p in enumerate(inp.cells)})
write_parquet(df, out.table, meta)
write_text_atomic(out.csv, summary.to_csv(index=False))
write_text_atomic(out.md, markdown_table(summary))
ctx.log.info("summary:\n%s", summary.to_string())
others = {k: pd.read_parquet(inp[k]) for k in ("pruning", "mimic") if k in inp.keys()}
long = comparison_long(df, others.get("pruning"), others.get("mimic"))
ctx.log.info("comparison: %d points from %s", len(long), ["structured", *others])
save_chart(comparison_chart(long), out.comparison_html, out.comparison_png)
