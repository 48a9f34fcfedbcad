"""Mimicking networks: one cell per model x mimicker type x depth, trained from the
hidden-state caches (training split to fit, validation split to select), then the aggregated
table, the summary (accuracy retained, parameter and latency reduction) and the charts.
"""


rule mimic_cell:
    input:
        unpack(inputs_of(mimic.cell_inputs)),
    output:
        cell=path("mimic_cell"),
        curves=path("mimic_curves"),
        predictions=path("mimic_predictions"),
        export=directory(path("mimic_export")),
    log:
        log("mimic_cell"),
    benchmark:
        bench("mimic_cell")
    wildcard_constraints:
        **mimic.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        # the exported mimicked model: front end, mimicker and head, not the whole model
        disk_mb=disk_mb(mimic.export_bytes),
        mem_mb=model_mem_mb(8000, 20),
        runtime=model_runtime(120),
        gpu=gpu_request,
    params:
        slice=slice_of(mimic.cell_slice),
        root=data.data_root(config, RESULTS),
        code=code_of("mimic_cell"),
    script:
        "../workflow_scripts/scripts/mimic_cell.py"


rule mimic_tables:
    input:
        **mimic.tables_inputs(config, RESULTS),
    output:
        **table_outputs("mimic"),
    log:
        log("mimic_tables"),
    benchmark:
        bench("mimic_tables")
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json(mimic.tables_slice(config)),
        code=code_of("mimic_tables"),
    script:
        "../workflow_scripts/scripts/mimic_tables.py"
