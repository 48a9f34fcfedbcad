"""Rule adapter: aggregate similarity cells, detect blocks, draw the heatmaps."""

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.report.charts import save_chart, similarity_heatmaps
from workflow_scripts.similarity.report import similarity_tables

ctx = RuleContext(snakemake)
cfg, out = ctx.slice, snakemake.output
sim, blocks = similarity_tables(snakemake.input.cells, cfg)
meta = ctx.provenance()
write_parquet(sim, out.table, meta)
write_text_atomic(out.blocks, blocks.to_csv(index=False))
ctx.log.info("blocks:\n%s", blocks.to_string())
save_chart(similarity_heatmaps(sim, blocks, cfg["knn_k"]), out.html, out.png)
for path in out.per_model:  # one chart per model: a heatmap per metric
    model = path.rsplit("similarity_", 1)[1].removesuffix(".html")
    one = similarity_heatmaps(sim[sim.model == model], blocks[blocks.model == model], cfg["knn_k"])
    save_chart(one, path)
ctx.seal()
