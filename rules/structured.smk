"""Structured pruning (hard-concrete L0 gates on heads and FFN units, distillation): one cell
per model x target sparsity, then the table and the cross-method comparison chart."""


rule structured_cell:
    input:
        unpack(inputs_of(structured.cell_inputs)),
    output:
        cell=path("structured_cell"),
        predictions=path("structured_predictions"),
        model_dir=directory(path("structured_model")),
    log:
        log("structured_cell"),
    benchmark:
        bench("structured_cell")
    wildcard_constraints:
        **structured.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=disk_mb(backbones.model_bytes),  # the pruned model: at most the whole
        mem_mb=model_mem_mb(6000, 20),
        runtime=model_runtime(120),
        gpu=gpu_request,
    params:
        slice=slice_of(structured.cell_slice),
        root=data.data_root(config, RESULTS),
        code=code_of("structured_cell"),
    script:
        "../workflow_scripts/scripts/structured_cell.py"


rule structured_tables:
    input:
        **structured.tables_inputs(config, RESULTS),
    output:
        **table_outputs("structured"),
    log:
        log("structured_tables"),
    benchmark:
        bench("structured_tables")
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json(structured.tables_slice(config)),
        code=code_of("structured_tables"),
    script:
        "../workflow_scripts/scripts/structured_tables.py"
