"""Layer pruning grid: one cell per model x strategy on the fine-tuned classifier, then the
aggregated table, the summary (largest n at >= 95% accuracy, AUC) and the charts."""


rule pruning_cell:
    input:
        unpack(inputs_of(pruning.cell_inputs)),
    output:
        cell=path("pruning_cell"),
        predictions=path("pruning_predictions"),
        export=directory(path("pruning_export")),
    log:
        log("pruning_cell"),
    benchmark:
        bench("pruning_cell")
    wildcard_constraints:
        **pruning.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=disk_mb(pruning.export_bytes),
        mem_mb=model_mem_mb(8000, 20),
        runtime=model_runtime(120),
        gpu=gpu_request,
    params:
        slice=slice_of(pruning.cell_slice),
        root=data.data_root(config, RESULTS),
        code=code_of("pruning_cell", pruning.cell_modules),
    script:
        "../workflow_scripts/scripts/pruning_cell.py"


rule pruning_tables:
    input:
        **pruning.tables_inputs(config, RESULTS),
    output:
        **table_outputs("pruning"),
    log:
        log("pruning_tables"),
    benchmark:
        bench("pruning_tables")
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json(pruning.tables_slice(config)),
        code=code_of("pruning_tables"),
    script:
        "../workflow_scripts/scripts/pruning_tables.py"
