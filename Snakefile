"""Layer redundancy in speech transformers: the workflow's entry point.

Stages live in rules/*.smk; helpers (config validation, per-cell params) in rules/common.smk.
"""


configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    model=model_pattern(),
    split="training|validation|testing",
    metric="|".join(config["similarity"]["metrics"]) or "NO_METRIC",


include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/backbones.smk"
include: "rules/similarity.smk"
include: "rules/pruning.smk"
include: "rules/mimic.smk"
include: "rules/structured.smk"
include: "rules/aggregate.smk"


rule all:
    default_target: True
    input:
        all_targets(),
