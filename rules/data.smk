"""Data stage: the synthetic corpus (unless data.root is set) and the checked manifest."""


rule synthesize_corpus:
    output:
        directory(path("corpus")),
    log:
        log("corpus"),
    benchmark:
        bench("corpus")
    conda:
        "../envs/data.yaml"
    resources:
        disk_mb=disk_mb(data.corpus_bytes),
        mem_mb=attempt_mem_mb(2000),
        runtime=60,
    params:
        slice=cell_json(data.corpus_slice(config)),
        code=code_of("synthesize_corpus"),
    script:
        "../workflow_scripts/scripts/synthesize_corpus.py"


rule manifest:
    input:
        unpack(inputs_of(data.manifest_inputs)),
    output:
        manifest=path("manifest"),
        summary=path("manifest_summary"),
    log:
        log("manifest"),
    benchmark:
        bench("manifest")
    conda:
        "../envs/data.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(4000),
        runtime=60,
    params:
        slice=cell_json(data.manifest_slice(config, RESULTS)),
        sources=sources_of(data.manifest_inputs),
        code=code_of("manifest"),
    script:
        "../workflow_scripts/scripts/manifest.py"
