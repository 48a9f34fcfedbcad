"""SpeechLLM decoder redundancy (Moumen et al.): spoken command sentences, the small decoder's
text pretraining and the SpeechLLMs' training (family `speechllm_pretrained`), the frozen
encoders' features, decoder-similarity and decoder-pruning cells and their tables (family
`speechllm`). The plan: workflow_scripts/speechllm/plan.py."""

speechllm = grid.plan("speechllm")
from workflow_scripts.speechllm import corpus_plan as speechllm_corpus
from workflow_scripts.speechllm import disk_plan as speechllm_disk

if speechllm.speech_source(config) == "corpora":

    # the speech splits from real corpora (speechllm.speech.source: corpora): each task's
    # utterances from its corpus part, resampled to 16 kHz; the same split folders
    rule speechllm_speech:
        input:
            unpack(inputs_of(speechllm_corpus.speech_inputs)),
        output:
            directory(path("speechllm_speech")),
        log:
            log("speechllm_speech"),
        benchmark:
            bench("speechllm_speech")
        wildcard_constraints:
            **speechllm.wildcard_constraints(config),
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            disk_mb=disk_mb(speechllm_disk.speech_bytes),
            mem_mb=attempt_mem_mb(3000),
            runtime=240,
        params:
            slice=lambda w: cell_json(speechllm_corpus.corpus_slice(config, w.split)),
            sources=sources_of(speechllm_corpus.speech_inputs),
            code=code_of("speechllm_corpus_speech"),
        script:
            "../workflow_scripts/scripts/speechllm_corpus_speech.py"

else:

    rule speechllm_speech:
        output:
            directory(path("speechllm_speech")),
        log:
            log("speechllm_speech"),
        benchmark:
            bench("speechllm_speech")
        wildcard_constraints:
            **speechllm.wildcard_constraints(config),
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            disk_mb=disk_mb(speechllm_disk.speech_bytes),
            mem_mb=attempt_mem_mb(3000),
            runtime=60,
        params:
            slice=lambda w: cell_json(speechllm.speech_slice(config, w.split)),
            code=code_of("speechllm_speech"),
        script:
            "../workflow_scripts/scripts/speechllm_speech.py"


rule speechllm_decoder:
    output:
        directory(f"{config['pretrained_dir']}/{{decoder}}"),
    log:
        log("speechllm_decoder"),
    benchmark:
        bench("speechllm_decoder")
    wildcard_constraints:
        **speechllm.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=disk_mb(speechllm_disk.decoder_bytes),
        mem_mb=speechllm.resource(config, "mem_mb"),
        runtime=speechllm.resource(config, "runtime", 4),
        gpu=speechllm.resource(config, "gpu"),
    params:
        slice=lambda w: cell_json(speechllm.decoder_slice(config, w.decoder)),
        code=code_of("speechllm_decoder"),
    script:
        "../workflow_scripts/scripts/speechllm_decoder.py"


rule speechllm_train:
    input:
        unpack(inputs_of(speechllm.train_inputs)),
    output:
        directory(f"{config['pretrained_dir']}/{{sllm}}"),
    log:
        log("speechllm_train"),
    benchmark:
        bench("speechllm_train")
    wildcard_constraints:
        **speechllm.wildcard_constraints(config, trained=True),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=disk_mb(speechllm_disk.train_bytes),  # scratch features: $TMPDIR
        mem_mb=speechllm.resource(config, "mem_mb"),
        runtime=speechllm.resource(config, "runtime", 4),
        gpu=speechllm.resource(config, "gpu"),
    params:
        slice=slice_of(speechllm.train_slice),
        sources=sources_of(speechllm.train_inputs),
        code=code_of("speechllm_train"),
    script:
        "../workflow_scripts/scripts/speechllm_train.py"


rule speechllm_features:
    input:
        unpack(inputs_of(speechllm.features_inputs)),
    output:
        path("speechllm_features"),
    log:
        log("speechllm_features"),
    benchmark:
        bench("speechllm_features")
    wildcard_constraints:
        **speechllm.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=disk_mb(speechllm_disk.features_bytes),
        mem_mb=speechllm.resource(config, "mem_mb"),
        runtime=speechllm.resource(config, "runtime"),
        gpu=speechllm.resource(config, "gpu"),
    params:
        slice=slice_of(speechllm.features_slice),
        sources=sources_of(speechllm.features_inputs),
        code=code_of("speechllm_features"),
    script:
        "../workflow_scripts/scripts/speechllm_features.py"


rule speechllm_similarity:
    input:
        unpack(inputs_of(speechllm.cell_inputs)),
    output:
        path("speechllm_similarity_cell"),
    log:
        log("speechllm_similarity_cell"),
    benchmark:
        bench("speechllm_similarity_cell")
    wildcard_constraints:
        **speechllm.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=speechllm.resource(config, "mem_mb"),
        runtime=speechllm.resource(config, "runtime"),
        gpu=speechllm.resource(config, "gpu"),
    params:
        slice=slice_of(speechllm.cell_slice),
        sources=sources_of(speechllm.cell_inputs),
        code=code_of("speechllm_similarity"),
    script:
        "../workflow_scripts/scripts/speechllm_similarity.py"


rule speechllm_pruning:
    input:
        unpack(inputs_of(speechllm.cell_inputs)),
    output:
        cell=path("speechllm_pruning_cell"),
        records=path("speechllm_pruning_records"),
    log:
        log("speechllm_pruning_cell"),
    benchmark:
        bench("speechllm_pruning_cell")
    wildcard_constraints:
        **speechllm.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=speechllm.resource(config, "mem_mb"),
        runtime=speechllm.resource(config, "runtime"),
        gpu=speechllm.resource(config, "gpu"),
    params:
        slice=slice_of(speechllm.cell_slice),
        sources=sources_of(speechllm.cell_inputs),
        code=code_of("speechllm_pruning"),
    script:
        "../workflow_scripts/scripts/speechllm_pruning.py"


rule speechllm_heal:
    input:
        unpack(inputs_of(speechllm.heal_inputs)),
    output:
        cell=path("speechllm_heal_cell"),
        records=path("speechllm_heal_records"),
    log:
        log("speechllm_heal_cell"),
    benchmark:
        bench("speechllm_heal_cell")
    wildcard_constraints:
        **speechllm.wildcard_constraints(config),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        disk_mb=10,  # parquet cells: kilobytes
        mem_mb=speechllm.resource(config, "mem_mb"),
        runtime=speechllm.resource(config, "runtime", 2),  # joint: every task, before + after
        gpu=speechllm.resource(config, "gpu"),
    params:
        slice=slice_of(speechllm.heal_slice),
        sources=sources_of(speechllm.heal_inputs),
        code=code_of("speechllm_heal"),
    script:
        "../workflow_scripts/scripts/speechllm_heal.py"


rule speechllm_tables:
    input:
        **speechllm.tables_inputs(config, RESULTS),
    output:
        **table_outputs("speechllm"),
    log:
        log("speechllm_tables"),
    benchmark:
        bench("speechllm_tables")
    conda:
        "../envs/report.yaml"
    resources:
        disk_mb=10,  # parquet cells, tables and charts: kilobytes
        mem_mb=attempt_mem_mb(2000),
        runtime=30,
    params:
        slice=cell_json(speechllm.tables_slice(config)),
        code=code_of("speechllm_tables"),
    script:
        "../workflow_scripts/scripts/speechllm_tables.py"
