"""Layer pruning grid: one cell per model x strategy on the fine-tuned classifier, then the
aggregated table, the summary (largest n at >= 95% accuracy, AUC) and the charts."""

from workflow_scripts.pruning import cells as pruning_cells


rule pruning_cell:
    input:
        unpack(lambda w: pruning_cells.cell_inputs(RESULTS, w.model, w.strategy)),
    output:
        f"{RESULTS}/cells/pruning/{{model}}/{{strategy}}.parquet",
    log:
        f"{LOGS}/pruning/{{model}}/{{strategy}}.log",
    benchmark:
        f"{BENCH}/pruning/{{model}}/{{strategy}}.tsv"
    wildcard_constraints:
        strategy=pruning_cells.strategy_pattern(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(8000, 20),
        runtime=model_runtime(120),
        gpu=gpu_request,
    params:
        slice=lambda w: pruning_cells.cell_json(config, w.strategy),
        root=data_root(),
    script:
        "../workflow_scripts/scripts/pruning_cell.py"


rule pruning_tables:
    input:
        cells=pruning_cells.cell_paths(config, RESULTS),
    output:
        table=f"{RESULTS}/tables/pruning.parquet",
        summary_csv=report(
            f"{RESULTS}/tables/pruning_summary.csv",
            category="Pruning",
            caption="../workflow_scripts/report/captions/pruning_summary.rst",
        ),
        summary_md=f"{RESULTS}/tables/pruning_summary.md",
        accuracy_html=report(
            f"{RESULTS}/charts/pruning_accuracy.html",
            category="Pruning",
            caption="../workflow_scripts/report/captions/pruning_accuracy.rst",
        ),
        accuracy_png=f"{RESULTS}/charts/pruning_accuracy.png",
        latency_html=report(
            f"{RESULTS}/charts/pruning_latency.html",
            category="Pruning",
            caption="../workflow_scripts/report/captions/pruning_latency.rst",
        ),
        latency_png=f"{RESULTS}/charts/pruning_latency.png",
    log:
        f"{LOGS}/pruning_tables.log",
    benchmark:
        f"{BENCH}/pruning_tables.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=lambda w: cell_json(pruning_cells.tables_params(config)),
    script:
        "../workflow_scripts/scripts/pruning_tables.py"
