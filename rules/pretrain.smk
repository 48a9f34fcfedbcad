"""Self-supervised pretraining of the small backbones (models with a `pretrain` spec)."""


rule pretrain_backbone:
    input:
        manifest=path("manifest"),
    output:
        directory(f"{config['pretrained_dir']}/{{model}}"),
    log:
        log("pretrain_work"),
    benchmark:
        bench("pretrain_work")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=disk_mb(backbones.model_bytes),
        mem_mb=model_mem_mb(6000, 40),
        runtime=model_runtime(240),
        gpu=gpu_request,
    params:
        slice=slice_of(backbones.pretrain_slice),
        root=data.data_root(config, RESULTS),
        work=path("pretrain_work"),
        code=code_of("pretrain_backbone"),
    script:
        "../workflow_scripts/scripts/pretrain_backbone.py"
