"""Rule adapter: the SpeechLLM tables and charts (workflow_scripts.speechllm.report)."""

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.core.tables import concat_cells
from workflow_scripts.report.charts import save_chart
from workflow_scripts.speechllm import report

ctx = RuleContext(snakemake)
inp, out, s = snakemake.input, snakemake.output, ctx.slice
sim, prun = concat_cells(list(inp.similarity)), concat_cells(list(inp.pruning))
records = concat_cells(list(inp.records))
heal, heal_records = concat_cells(list(inp.heal)), concat_cells(list(inp.heal_records))
tables = report.build_tables(sim, prun, records, s["threshold"], s["bootstrap"], s["overlap_n"],
                             heal, heal_records)  # fmt: skip
meta = ctx.provenance()
write_parquet(sim, out.similarity, meta)
write_parquet(prun, out.pruning, meta)
for name in ("summary", "healing", "overlap", "pairs"):
    shown = report.display(name, tables[name])  # percent, layers numbered 1..L
    write_text_atomic(out[f"{name}_csv"], shown.to_csv(index=False))
    write_text_atomic(out[f"{name}_md"], report.markdown(name, tables[name]))
    ctx.log.info("%s:\n%s", name, tables[name].to_string())
charts = report.charts(sim, prun, s["threshold"])
for name, chart in charts.items():
    save_chart(chart, out[f"{name}_html"], out[f"{name}_png"])
ctx.seal()
