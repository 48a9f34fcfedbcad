"""Similarity grid: one cell per model x metric on the hidden-state cache, then the groups of
similar layers per model, the stacked table and the heatmaps."""


rule similarity_cell:
    input:
        unpack(inputs_of(similarity.cell_inputs)),
    output:
        path("similarity_cell"),
    log:
        log("similarity_cell"),
    benchmark:
        bench("similarity_cell")
    wildcard_constraints:
        **similarity.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=similarity_mem_mb(4000, 20),
        runtime=model_runtime(60),
    params:
        slice=slice_of(similarity.cell_slice),
        code=code_of("similarity_cell", similarity.cell_modules),
    script:
        "../workflow_scripts/scripts/similarity_cell.py"


rule model_groups:
    input:
        path("similarity_cell"),
    output:
        path("model_groups"),
    log:
        log("model_groups"),
    benchmark:
        bench("model_groups")
    wildcard_constraints:
        **similarity.wildcard_constraints(config),
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(1000),
        runtime=10,
    params:
        slice=cell_json(similarity.tables_slice(config)),
        code=code_of("model_groups"),
    script:
        "../workflow_scripts/scripts/model_groups.py"


rule similarity_tables:
    input:
        **similarity.tables_inputs(config, RESULTS),
    output:
        **table_outputs("similarity"),
        per_model=report(
            expand(path("similarity_model_chart"), model=config["models"]),
            category="Similarity",
            subcategory="per model",
            caption="../workflow_scripts/report/captions/similarity.rst",
        ),
    log:
        log("similarity_tables"),
    benchmark:
        bench("similarity_tables")
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json(similarity.tables_slice(config)),
        code=code_of("similarity_tables"),
    script:
        "../workflow_scripts/scripts/similarity_tables.py"
