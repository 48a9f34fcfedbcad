"""Rule adapter: aggregate similarity cells, detect blocks, draw the heatmaps."""

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.core.tables import concat_cells
from workflow_scripts.report.charts import save_chart, similarity_heatmaps
from workflow_scripts.similarity.report import blocks_table

ctx = RuleContext(snakemake)
cfg = ctx.slice
sim = concat_cells(list(snakemake.input.cells))
blocks = blocks_table(sim, cfg["criterion"], cfg["penalty"], cfg["max_blocks"], cfg["knn_k"])
meta = ctx.provenance(inputs={f"cell{i}": p for i, p in enumerate(snakemake.input.cells)})
write_parquet(sim, snakemake.output.table, meta)
write_text_atomic(snakemake.output.blocks, blocks.to_csv(index=False))
ctx.log.info("blocks:\n%s", blocks.to_string())
chart = similarity_heatmaps(sim, blocks, cfg["knn_k"])
save_chart(chart, snakemake.output.html, snakemake.output.png)
for path in snakemake.output.per_model:  # one chart per model: a heatmap per metric
    model = path.rsplit("similarity_", 1)[1].removesuffix(".html")
    one = similarity_heatmaps(sim[sim.model == model], blocks[blocks.model == model], cfg["knn_k"])
    save_chart(one, path)
