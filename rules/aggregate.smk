"""Aggregation: every cell kind gathered into results/tables/*, the overview and the charts.

The stages' own tables (similarity, pruning, mimic, structured) come from their rules; here the
baseline table and the overview, which combines the tables of the stages in config outputs.
"""

from workflow_scripts.report import aggregate


report: "../workflow_scripts/report/captions/workflow.rst"


rule baseline_tables:
    input:
        cells=aggregate.baseline_cells(config, RESULTS),
    output:
        table=f"{RESULTS}/tables/baseline.parquet",
        csv=report(
            f"{RESULTS}/tables/baseline.csv",
            category="Overview",
            caption="../workflow_scripts/report/captions/baseline_table.rst",
        ),
        md=f"{RESULTS}/tables/baseline.md",
        html=report(
            f"{RESULTS}/charts/baseline.html",
            category="Overview",
            caption="../workflow_scripts/report/captions/baseline.rst",
        ),
        png=f"{RESULTS}/charts/baseline.png",
    log:
        f"{LOGS}/baseline_tables.log",
    benchmark:
        f"{BENCH}/baseline_tables.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json({}),
    script:
        "../workflow_scripts/scripts/aggregate_baseline.py"


rule overview:
    input:
        unpack(lambda w: aggregate.overview_inputs(config, RESULTS)),
    output:
        table=f"{RESULTS}/tables/overview.parquet",
        csv=report(
            f"{RESULTS}/tables/overview.csv",
            category="Overview",
            caption="../workflow_scripts/report/captions/overview_table.rst",
        ),
        md=f"{RESULTS}/tables/overview.md",
        html=report(
            f"{RESULTS}/charts/overview.html",
            category="Overview",
            caption="../workflow_scripts/report/captions/overview.rst",
        ),
        png=f"{RESULTS}/charts/overview.png",
    log:
        f"{LOGS}/overview.log",
    benchmark:
        f"{BENCH}/overview.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json(aggregate.overview_params(config)),
    script:
        "../workflow_scripts/scripts/aggregate_overview.py"
