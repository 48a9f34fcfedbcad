"""Aggregation across stages: the baseline table and the overview. The stages' own tables
(similarity, pruning, mimic, structured) come from their rules; the overview combines the
tables of the stages listed in config outputs."""


rule baseline_tables:
    input:
        **aggregate.baseline_inputs(config, RESULTS),
    output:
        **table_outputs("baseline"),
    log:
        log("baseline_tables"),
    benchmark:
        bench("baseline_tables")
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        code=code_of("aggregate_baseline"),
    script:
        "../workflow_scripts/scripts/aggregate_baseline.py"


rule overview:
    input:
        **aggregate.overview_inputs(config, RESULTS),
    output:
        **table_outputs("overview"),
    log:
        log("overview"),
    benchmark:
        bench("overview")
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json(aggregate.overview_slice(config)),
        code=code_of("aggregate_overview"),
    script:
        "../workflow_scripts/scripts/aggregate_overview.py"
