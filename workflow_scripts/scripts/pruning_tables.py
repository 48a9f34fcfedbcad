"""Rule adapter: aggregate the pruning cells, summarise them (largest n at >= threshold, AUC)
and draw accuracy-vs-removed-layers and latency-vs-accuracy charts."""

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.core.tables import concat_cells, markdown_table
from workflow_scripts.pruning.report import summary_display, summary_table
from workflow_scripts.report.charts import pruning_accuracy_chart, pruning_latency_chart, save_chart

ctx = RuleContext(snakemake)
out = snakemake.output
threshold = ctx.slice["threshold"]
df = concat_cells(list(snakemake.input.cells))
summary = summary_table(df, threshold)
meta = ctx.provenance()
write_parquet(df, out.table, meta)
shown = summary_display(summary)  # percent, layers numbered 1..L
write_text_atomic(out.summary_csv, shown.to_csv(index=False))
write_text_atomic(out.summary_md, markdown_table(shown))
ctx.log.info("summary:\n%s", summary.to_string())
save_chart(pruning_accuracy_chart(df, threshold), out.accuracy_html, out.accuracy_png)
save_chart(pruning_latency_chart(df), out.latency_html, out.latency_png)
ctx.seal()
