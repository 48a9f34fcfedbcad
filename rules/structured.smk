"""Structured pruning (hard-concrete L0 gates on heads and FFN units, distillation): one cell
per model x target sparsity, then the cross-method comparison chart."""

from workflow_scripts.structured import cells as structured_cells


rule structured_cell:
    input:
        unpack(lambda w: structured_cells.cell_inputs(RESULTS, w.model)),
    output:
        cell=f"{RESULTS}/cells/structured/{{model}}/{{sparsity}}.parquet",
        model_dir=directory(f"{RESULTS}/structured/{{model}}/{{sparsity}}"),
    log:
        f"{LOGS}/structured/{{model}}/{{sparsity}}.log",
    benchmark:
        f"{BENCH}/structured/{{model}}/{{sparsity}}.tsv"
    wildcard_constraints:
        sparsity=structured_cells.sparsity_pattern(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(6000, 20),
        runtime=model_runtime(120),
        gpu=gpu_request,
    params:
        slice=lambda w: structured_cells.cell_json(config, w.sparsity),
        root=data_root(),
    script:
        "../workflow_scripts/scripts/structured_cell.py"


rule structured_tables:
    input:
        unpack(lambda w: structured_cells.comparison_inputs(config, RESULTS)),
        cells=structured_cells.cell_paths(config, RESULTS),
    output:
        table=f"{RESULTS}/tables/structured.parquet",
        csv=report(
            f"{RESULTS}/tables/structured.csv",
            category="Structured pruning",
            caption="../workflow_scripts/report/captions/structured_table.rst",
        ),
        md=f"{RESULTS}/tables/structured.md",
        comparison_html=report(
            f"{RESULTS}/charts/comparison.html",
            category="Structured pruning",
            caption="../workflow_scripts/report/captions/comparison.rst",
        ),
        comparison_png=f"{RESULTS}/charts/comparison.png",
    log:
        f"{LOGS}/structured_tables.log",
    benchmark:
        f"{BENCH}/structured_tables.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=lambda w: cell_json(
            {"comparison": sorted(structured_cells.comparison_inputs(config, RESULTS))}
        ),
    script:
        "../workflow_scripts/scripts/structured_tables.py"
