"""Similarity grid: one cell per model x metric on the hidden-state cache, then tables+charts."""


rule similarity_cell:
    input:
        cache=f"{RESULTS}/cache/{{model}}/validation.safetensors",
    output:
        f"{RESULTS}/cells/similarity/{{model}}/{{metric}}.parquet",
    log:
        f"{LOGS}/similarity/{{model}}/{{metric}}.log",
    benchmark:
        f"{BENCH}/similarity/{{model}}/{{metric}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(4000, 20),
        runtime=model_runtime(60),
    params:
        slice=lambda w: similarity_cell(w.metric),
    script:
        "../workflow_scripts/scripts/similarity_cell.py"


rule similarity_tables:
    input:
        cells=similarity_cells(),
    output:
        table=f"{RESULTS}/tables/similarity.parquet",
        blocks=f"{RESULTS}/tables/blocks.csv",
        html=report(
            f"{RESULTS}/charts/similarity.html",
            category="Similarity",
            caption="../workflow_scripts/report/captions/similarity.rst",
        ),
        png=f"{RESULTS}/charts/similarity.png",
        per_model=report(
            expand(
                f"{RESULTS}/charts/similarity_{{model}}.html", model=config["models"]
            ),
            category="Similarity",
            subcategory="per model",
            caption="../workflow_scripts/report/captions/similarity.rst",
        ),
    log:
        f"{LOGS}/similarity_tables.log",
    benchmark:
        f"{BENCH}/similarity_tables.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=lambda w: cell_json(config["similarity"]["blocks"]),
    script:
        "../workflow_scripts/scripts/similarity_tables.py"


rule model_blocks:
    input:
        f"{RESULTS}/cells/similarity/{{model}}/{{metric}}.parquet",
    output:
        f"{RESULTS}/blocks/{{model}}/{{metric}}.csv",
    log:
        f"{LOGS}/blocks/{{model}}/{{metric}}.log",
    benchmark:
        f"{BENCH}/blocks/{{model}}/{{metric}}.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=attempt_mem_mb(1000),
        runtime=10,
    params:
        slice=lambda w: cell_json(config["similarity"]["blocks"]),
    script:
        "../workflow_scripts/scripts/model_blocks.py"
