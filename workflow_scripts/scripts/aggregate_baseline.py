"""Rule adapter: stack the baseline cells into the baseline table (parquet, csv, md, chart)."""

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.core.tables import concat_cells, markdown_table
from workflow_scripts.report.aggregate import baseline_chart, baseline_display, baseline_table
from workflow_scripts.report.charts import save_chart

ctx = RuleContext(snakemake)
out = snakemake.output
cells = list(snakemake.input.cells)
table = baseline_table(concat_cells(cells))
write_parquet(table, out.table, ctx.provenance())
shown = baseline_display(table)  # percent
write_text_atomic(out.csv, shown.to_csv(index=False))
write_text_atomic(out.md, markdown_table(shown))
ctx.log.info("baseline:\n%s", table.to_string())
save_chart(baseline_chart(table), out.html, out.png)
ctx.seal()
