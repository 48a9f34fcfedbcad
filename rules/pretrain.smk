"""Self-supervised pretraining of the small backbones (models with a `pretrain` spec)."""


rule pretrain_backbone:
    input:
        manifest=f"{RESULTS}/data/manifest.parquet",
    output:
        directory(f"{config['pretrained_dir']}/{{model}}"),
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=model_mem_mb(6000, 40),
        runtime=model_runtime(240),
        gpu=gpu_request,
    params:
        slice=lambda w: pretrain_cell(w.model),
        root=data_root(),
        work=lambda w: f"{RESULTS}/pretrain_work/{w.model}",
    script:
        "../workflow_scripts/scripts/pretrain_backbone.py"
