"""Rule adapter: the overview (headline numbers of every enabled stage, per model) and the
Pareto table of every compressed model."""

import pandas as pd

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.core.tables import markdown_table
from workflow_scripts.report.charts import save_chart
from workflow_scripts.report.overview import (
    overview_chart,
    overview_markdown,
    overview_table,
    speechllm_rows,
)
from workflow_scripts.report.pareto import HEADLINE_USES, pareto_table

ctx = RuleContext(snakemake)
out, inputs = snakemake.output, dict(snakemake.input.items())
tables = {k: pd.read_csv(p) if p.endswith(".csv") else pd.read_parquet(p)
          for k, p in inputs.items()}  # fmt: skip
threshold = ctx.slice["threshold"]
stages = {k: tables.get(k) for k in ("pruning", "mimic", "structured")}
pareto = pareto_table(**stages, threshold=threshold)
sllm = [tables.pop(k, None) for k in ("speechllm_summary", "speechllm_overlap")]
sllm = speechllm_rows(*sllm) if sllm[0] is not None else None
overview = overview_table(threshold=threshold, pareto=pareto, **tables)
write_parquet(overview, out.table, ctx.provenance())
write_text_atomic(out.csv, overview.to_csv(index=False))
write_text_atomic(out.md, overview_markdown(overview, threshold, ctx.slice["stages"], sllm))
write_text_atomic(out.pareto_csv, pareto.to_csv(index=False))
write_text_atomic(out.pareto_md, "# Pareto table\n\n"
                  f"`headline`: the overview's pick, on {HEADLINE_USES}; "
                  "`headline_with_confidence`: the same pick with `meets_with_confidence`.\n\n"
                  + markdown_table(pareto, ".1f"))  # fmt: skip
ctx.log.info("overview:\n%s", overview.to_string())
save_chart(overview_chart(overview, threshold), out.html, out.png)
ctx.seal()
