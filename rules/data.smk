"""Data stage: the synthetic corpus (unless data.root is set) and the checked manifest."""


rule synthesize_corpus:
    output:
        directory(SYNTH_ROOT),
    log:
        f"{LOGS}/synthesize_corpus.log",
    benchmark:
        f"{BENCH}/synthesize_corpus.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=attempt_mem_mb(2000),
        runtime=60,
    params:
        slice=corpus_cell(),
    script:
        "../workflow_scripts/scripts/synthesize_corpus.py"


rule manifest:
    input:
        unpack(manifest_inputs),
    output:
        manifest=f"{RESULTS}/data/manifest.parquet",
        summary=f"{RESULTS}/data/manifest_summary.json",
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=attempt_mem_mb(4000),
        runtime=60,
    params:
        slice=manifest_cell(),
    script:
        "../workflow_scripts/scripts/manifest.py"
