"""Mimicking networks: one cell per model x mimicker type x depth, trained from the
hidden-state caches (training split to fit, validation split to select), then the aggregated
table, the summary (accuracy retained, parameter and latency reduction) and the charts.
"""

from workflow_scripts.mimic import cells as mimic_cells

try:
    mimic_cells.check_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


rule mimic_cell:
    input:
        unpack(
            lambda w: mimic_cells.cell_inputs(
                config, RESULTS, w.model, w.kind, w.depth
            )
        ),
    output:
        cell=f"{RESULTS}/cells/mimic/{{model}}/{{kind}}-{{depth}}.parquet",
        curves=f"{RESULTS}/cells/mimic/{{model}}/{{kind}}-{{depth}}.curves.parquet",
    log:
        f"{LOGS}/mimic/{{model}}/{{kind}}-{{depth}}.log",
    benchmark:
        f"{BENCH}/mimic/{{model}}/{{kind}}-{{depth}}.tsv"
    wildcard_constraints:
        kind="linear|transformer|no_mimic",
        depth="[0-9]+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(8000, 20),
        runtime=model_runtime(120),
        gpu=gpu_request,
    params:
        slice=lambda w: mimic_cells.cell_json(config, w.model, w.kind, w.depth),
        root=data_root(),
    script:
        "../workflow_scripts/scripts/mimic_cell.py"


rule mimic_tables:
    input:
        cells=mimic_cells.cell_paths(config, RESULTS),
        curves=mimic_cells.cell_paths(config, RESULTS, curves=True),
    output:
        table=f"{RESULTS}/tables/mimic.parquet",
        summary_csv=report(
            f"{RESULTS}/tables/mimic_summary.csv",
            category="Mimickers",
            caption="../workflow_scripts/report/captions/mimic_summary.rst",
        ),
        summary_md=f"{RESULTS}/tables/mimic_summary.md",
        tradeoff_html=report(
            f"{RESULTS}/charts/mimic_tradeoff.html",
            category="Mimickers",
            caption="../workflow_scripts/report/captions/mimic_tradeoff.rst",
        ),
        tradeoff_png=f"{RESULTS}/charts/mimic_tradeoff.png",
        curves_html=report(
            f"{RESULTS}/charts/mimic_curves.html",
            category="Mimickers",
            caption="../workflow_scripts/report/captions/mimic_curves.rst",
        ),
        curves_png=f"{RESULTS}/charts/mimic_curves.png",
    log:
        f"{LOGS}/mimic_tables.log",
    benchmark:
        f"{BENCH}/mimic_tables.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=lambda w: cell_json({"cells": mimic_cells.grid(config)}),
    script:
        "../workflow_scripts/scripts/mimic_tables.py"
