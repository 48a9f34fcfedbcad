"""Backbones: keyword fine-tuning (+ baseline evaluation) and the hidden-state cache."""

# what the caches store, as every stage asks (plan-only: no job imports it)
from workflow_scripts.backbones import cache_plan


rule finetune:
    input:
        unpack(inputs_of(backbones.finetune_inputs)),
    output:
        model=directory(path("finetuned")),
        baseline=path("baseline_cell"),
        predictions=path("baseline_predictions"),
    log:
        log("finetuned"),
    benchmark:
        bench("finetuned")
    priority: 10  # the grid's critical path: start every fine-tuning before any cell
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(8000, 40),
        runtime=model_runtime(180),
        disk_mb=disk_mb(backbones.finetune_bytes),
        gpu=gpu_request,
    params:
        slice=slice_of(backbones.finetune_slice),
        root=data.data_root(config, RESULTS),
        work=path("finetune_work"),
        sources=sources_of(backbones.finetune_inputs),
        code=code_of("finetune"),
    script:
        "../workflow_scripts/scripts/finetune.py"


rule hidden_cache:
    input:
        unpack(inputs_of(cache_plan.cache_inputs)),
    output:
        path("cache"),
    log:
        log("cache"),
    benchmark:
        bench("cache")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(8000, 20),
        runtime=model_runtime(60),
        disk_mb=disk_mb(cache_plan.cache_bytes),
        gpu=gpu_request,
    params:
        slice=slice_of(cache_plan.cache_slice),
        root=data.data_root(config, RESULTS),
        code=code_of("hidden_cache", cache_plan.cache_modules),
    script:
        "../workflow_scripts/scripts/hidden_cache.py"
