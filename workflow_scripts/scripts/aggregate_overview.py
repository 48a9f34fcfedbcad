"""Rule adapter: the overview - the headline numbers of every enabled stage, per model."""

import pandas as pd

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.report.aggregate import overview_chart, overview_markdown, overview_table
from workflow_scripts.report.charts import save_chart

ctx = RuleContext(snakemake)
out = snakemake.output
inputs = dict(snakemake.input.items())
tables = {
    name: pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
    for name, path in inputs.items()
}
threshold = ctx.slice["threshold"]
overview = overview_table(threshold=threshold, **tables)
write_parquet(overview, out.table, ctx.provenance(inputs=inputs))
write_text_atomic(out.csv, overview.to_csv(index=False))
write_text_atomic(out.md, overview_markdown(overview, threshold, ctx.slice["stages"]))
ctx.log.info("overview:\n%s", overview.to_string())
save_chart(overview_chart(overview), out.html, out.png)
