"""Backbones: keyword fine-tuning (+ baseline evaluation) and the hidden-state cache."""


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        model=directory(f"{RESULTS}/finetuned/{{model}}"),
        baseline=f"{RESULTS}/cells/baseline/{{model}}.parquet",
    log:
        f"{LOGS}/finetune/{{model}}.log",
    benchmark:
        f"{BENCH}/finetune/{{model}}.tsv"
    priority: 10  # the grid's critical path: start every fine-tuning before any cell
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(8000, 40),
        runtime=model_runtime(180),
        gpu=gpu_request,
    params:
        slice=lambda w: finetune_cell(w.model),
        root=data_root(),
        work=lambda w: f"{RESULTS}/finetune_work/{w.model}",
    script:
        "../workflow_scripts/scripts/finetune.py"


rule hidden_cache:
    input:
        model=f"{RESULTS}/finetuned/{{model}}",
        manifest=f"{RESULTS}/data/manifest.parquet",
    output:
        f"{RESULTS}/cache/{{model}}/{{split}}.safetensors",
    log:
        f"{LOGS}/cache/{{model}}/{{split}}.log",
    benchmark:
        f"{BENCH}/cache/{{model}}/{{split}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(8000, 20),
        runtime=model_runtime(60),
        gpu=gpu_request,
    params:
        slice=lambda w: cache_cell(w.split),
        root=data_root(),
    script:
        "../workflow_scripts/scripts/hidden_cache.py"
