"""Rule adapter: stack the mimic cells, summarise them, draw the trade-off and curve charts."""

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.core.tables import concat_cells
from workflow_scripts.mimic.report import (
    summary_display,
    summary_markdown,
    summary_table,
    tradeoff_long,
)
from workflow_scripts.report.charts import mimic_curves_chart, mimic_tradeoff_chart, save_chart

ctx = RuleContext(snakemake)
out = snakemake.output
cells = concat_cells(list(snakemake.input.cells))
curves = concat_cells(list(snakemake.input.curves))
summary = summary_table(cells, ctx.slice["threshold"])
meta = ctx.provenance()
write_parquet(cells, out.table, meta)
write_text_atomic(out.summary_csv, summary_display(summary).to_csv(index=False))
write_text_atomic(out.summary_md, summary_markdown(summary))
ctx.log.info("summary:\n%s", summary.to_string())
chart = mimic_tradeoff_chart(tradeoff_long(summary), ctx.slice["threshold"])
save_chart(chart, out.tradeoff_html, out.tradeoff_png)
save_chart(mimic_curves_chart(curves), out.curves_html, out.curves_png)
ctx.seal()
