"""Layer redundancy in speech transformers: the workflow's entry point.

Stages live in rules/*.smk (one file per stage); helpers, the one config validation and the
per-cell params in rules/common.smk; each stage's plan in workflow_scripts/<stage>/plan.py.
"""

import sys

from snakemake.utils import min_version

min_version("9")


configfile: "config.yaml"


# `--configfile a.yaml b.yaml`: the grids combine, the files' `outputs` lists are united
# instead of the last one replacing the others (workflow_scripts/grid.py, UNITED_KEYS).
sys.path.insert(0, workflow.basedir)
from workflow_scripts.grid import unite_configfiles

unite_configfiles(workflow.config_settings)


include: "rules/common.smk"


report: "workflow_scripts/report/captions/workflow.rst"


wildcard_constraints:
    **backbones.wildcard_constraints(config),


include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/backbones.smk"
include: "rules/similarity.smk"
include: "rules/pruning.smk"
include: "rules/mimic.smk"
include: "rules/structured.smk"
include: "rules/speechllm.smk"
include: "rules/aggregate.smk"


localrules:
    all,
    model_groups,
    baseline_tables,
    overview,


rule all:
    default_target: True
    input:
        grid.targets(config, RESULTS),
