"""Data stage: the synthetic corpus (unless data.root is set) and the checked manifest."""


rule synthesize_corpus:
    output:
        directory(SYNTH_ROOT),
    params:
        cell=corpus_cell(),
    log:
        f"{LOGS}/synthesize_corpus.log",
    benchmark:
        f"{BENCH}/synthesize_corpus.tsv"
    resources:
        mem_mb=2000,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/scripts/synthesize_corpus.py"


rule manifest:
    input:
        root=data_root(),
    output:
        manifest=f"{RESULTS}/data/manifest.parquet",
        summary=f"{RESULTS}/data/manifest_summary.json",
    params:
        cell=manifest_cell(),
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    resources:
        mem_mb=2000,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/scripts/manifest.py"
