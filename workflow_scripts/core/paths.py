"""Every output path of the workflow, defined once.

Templates use Snakemake's wildcard syntax (``{model}``), relative to the results folder. The
rules use them as they are (``path("pruning_cell")`` keeps every wildcard); code and tests fill
them (``path("pruning_cell", model="m", strategy="backward")``), and a wildcard left out stays a
wildcard, so the same template serves ``output:``, ``expand`` and a test's expected file.

Vocabulary: a *cell* is one grid output (one parquet per model x setting); a stage's *tables*
are its aggregation rule's outputs, by role (``table``, ``summary_csv``, ``html`` ...).
"""

from __future__ import annotations

import os
import string

#: The default results root: every output, log and benchmark lies under it.
RESULTS = "results"
#: The environment variable that sets the results root (over config/site.yaml's
#: ``results_dir``, under ``--config results_dir=...``).
RESULTS_ENV = "LAYER_REDUNDANCY_RESULTS"
#: A path key's prefix that stands for the results root (``pretrained_dir: <results>/...``).
RESULTS_PLACEHOLDER = "<results>"

FILES = {
    # data
    "corpus": "corpus/speech_commands_v0.02",
    "manifest": "data/manifest.parquet",
    "manifest_summary": "data/manifest_summary.json",
    # backbones
    "pretrain_work": "pretrain_work/{model}",
    "finetuned": "finetuned/{model}",
    "finetune_work": "finetune_work/{model}",
    "cache": "cache/{model}/{split}.safetensors",
    # cells: one file per grid cell
    "baseline_cell": "cells/baseline/{model}.parquet",
    "baseline_predictions": "cells/baseline/{model}.predictions.parquet",
    "similarity_cell": "cells/similarity/{model}/{metric}.parquet",
    "pruning_cell": "cells/pruning/{model}/{strategy}.parquet",
    "pruning_predictions": "cells/pruning/{model}/{strategy}.predictions.parquet",
    "mimic_cell": "cells/mimic/{model}/{kind}-{depth}.parquet",
    "mimic_curves": "cells/mimic/{model}/{kind}-{depth}.curves.parquet",
    "mimic_predictions": "cells/mimic/{model}/{kind}-{depth}.predictions.parquet",
    "structured_cell": "cells/structured/{model}/{sparsity}.parquet",
    "structured_predictions": "cells/structured/{model}/{sparsity}.predictions.parquet",
    # per-model side outputs
    "model_groups": "blocks/{model}/{metric}.csv",
    "structured_model": "structured/{model}/{sparsity}",
    "similarity_model_chart": "charts/similarity_{model}.html",
    # the one HTML report
    "report": "report.html",
    # SpeechLLM decoder redundancy
    "speechllm_speech": "speechllm/speech/{split}",
    "speechllm_features": "speechllm/features/{sllm}/{split}.safetensors",
    "speechllm_similarity_cell": "cells/speechllm_similarity/{sllm}/{task}-{input}.parquet",
    "speechllm_pruning_cell": "cells/speechllm_pruning/{sllm}/{task}-{strategy}.parquet",
    "speechllm_pruning_records": "cells/speechllm_pruning/{sllm}/{task}-{strategy}.records.parquet",
    "speechllm_heal_cell": "cells/speechllm_heal/{sllm}/{healing}.parquet",
    "speechllm_heal_records": "cells/speechllm_heal/{sllm}/{healing}.records.parquet",
    # the jobs writing into pretrained_dir (their logs and benchmarks are named by these)
    "speechllm_decoder": "speechllm/decoders/{decoder}",
    "speechllm_train": "speechllm/trained/{sllm}",
}

# Each aggregation rule's outputs by role; the roles are the rule's named outputs.
TABLES = {
    "baseline": {
        "table": "tables/baseline.parquet",
        "csv": "tables/baseline.csv",
        "md": "tables/baseline.md",
        "html": "charts/baseline.html",
        "png": "charts/baseline.png",
    },
    "similarity": {
        "table": "tables/similarity.parquet",
        "blocks": "tables/blocks.csv",
        "html": "charts/similarity.html",
        "png": "charts/similarity.png",
    },
    "pruning": {
        "table": "tables/pruning.parquet",
        "summary_csv": "tables/pruning_summary.csv",
        "summary_md": "tables/pruning_summary.md",
        "accuracy_html": "charts/pruning_accuracy.html",
        "accuracy_png": "charts/pruning_accuracy.png",
        "latency_html": "charts/pruning_latency.html",
        "latency_png": "charts/pruning_latency.png",
    },
    "mimic": {
        "table": "tables/mimic.parquet",
        "summary_csv": "tables/mimic_summary.csv",
        "summary_md": "tables/mimic_summary.md",
        "tradeoff_html": "charts/mimic_tradeoff.html",
        "tradeoff_png": "charts/mimic_tradeoff.png",
        "curves_html": "charts/mimic_curves.html",
        "curves_png": "charts/mimic_curves.png",
    },
    "structured": {
        "table": "tables/structured.parquet",
        "csv": "tables/structured.csv",
        "md": "tables/structured.md",
        "comparison_html": "charts/comparison.html",
        "comparison_png": "charts/comparison.png",
    },
    "speechllm": {
        "similarity": "tables/speechllm_similarity.parquet",
        "pruning": "tables/speechllm_pruning.parquet",
        "summary_csv": "tables/speechllm_summary.csv",
        "summary_md": "tables/speechllm_summary.md",
        "overlap_csv": "tables/speechllm_overlap.csv",
        "overlap_md": "tables/speechllm_overlap.md",
        "pairs_csv": "tables/speechllm_overlap_pairs.csv",
        "pairs_md": "tables/speechllm_overlap_pairs.md",
        "healing_csv": "tables/speechllm_healing.csv",
        "healing_md": "tables/speechllm_healing.md",
        "similarity_html": "charts/speechllm_similarity.html",
        "similarity_png": "charts/speechllm_similarity.png",
        "delta_wer_html": "charts/speechllm_delta_wer.html",
        "delta_wer_png": "charts/speechllm_delta_wer.png",
    },
    "overview": {
        "table": "tables/overview.parquet",
        "csv": "tables/overview.csv",
        "md": "tables/overview.md",
        "html": "charts/overview.html",
        "png": "charts/overview.png",
        "pareto_csv": "tables/pareto.csv",
        "pareto_md": "tables/pareto.md",
    },
}

# Report captions (``workflow_scripts/report/captions/<file>``) of the outputs that enter the
# HTML report: (stage, role) -> caption file.
CAPTIONS = {
    ("baseline", "csv"): "baseline_table.rst",
    ("baseline", "html"): "baseline.rst",
    ("similarity", "html"): "similarity.rst",
    ("pruning", "summary_csv"): "pruning_summary.rst",
    ("pruning", "accuracy_html"): "pruning_accuracy.rst",
    ("pruning", "latency_html"): "pruning_latency.rst",
    ("mimic", "summary_csv"): "mimic_summary.rst",
    ("mimic", "tradeoff_html"): "mimic_tradeoff.rst",
    ("mimic", "curves_html"): "mimic_curves.rst",
    ("structured", "csv"): "structured_table.rst",
    ("structured", "comparison_html"): "comparison.rst",
    ("overview", "csv"): "overview_table.rst",
    ("overview", "html"): "overview.rst",
    ("overview", "pareto_csv"): "pareto.rst",
    ("speechllm", "summary_csv"): "speechllm_summary.rst",
    ("speechllm", "overlap_csv"): "speechllm_overlap.rst",
    ("speechllm", "similarity_html"): "speechllm_similarity.rst",
    ("speechllm", "delta_wer_html"): "speechllm_delta_wer.rst",
}
# The report's category of each stage's outputs.
CATEGORIES = {
    "baseline": "Overview",
    "overview": "Overview",
    "similarity": "Similarity",
    "pruning": "Pruning",
    "mimic": "Mimickers",
    "structured": "Structured pruning",
    "speechllm": "SpeechLLM decoder",
}


class _KeepMissing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, **wildcards) -> str:
    """``template`` with the given wildcards filled in; the others stay ``{name}``."""
    return string.Formatter().vformat(template, (), _KeepMissing(wildcards))


def results_root(config: dict | None = None) -> str:
    """The run's results root: ``config["results_dir"]`` (default ``results``), normalised;
    relative = relative to the working directory of the run. Set in config/site.yaml, by
    ``$LAYER_REDUNDANCY_RESULTS`` or ``--config results_dir=...``
    (:func:`workflow_scripts.core.site.config_overrides`)."""
    return os.path.normpath(str((config or {}).get("results_dir") or RESULTS))


def results_problems(config: dict) -> list[str]:
    """What is wrong with ``results_dir``: it must name a folder written out (no ``~``,
    ``$VAR`` or Snakemake wildcard braces: jobs re-read the config on other hosts)."""
    value = str(config.get("results_dir") or RESULTS)
    bad = [c for c in ("~", "$", "{", "}") if c in value]
    if bad:
        return [f"config.results_dir: {value!r} holds {' '.join(bad)}; write the folder out "
                "(an absolute path, or one relative to the working directory)"]  # fmt: skip
    if results_root(config) in (".", ""):
        return [f"config.results_dir: {value!r} is the working directory; name a folder"]
    return []


def resolve_results(config: dict) -> dict:
    """``config`` in place with ``results_dir`` normalised and a leading ``<results>`` of
    ``pretrained_dir`` replaced by it (idempotent)."""
    if "results_dir" in config:
        config["results_dir"] = results_root(config)
    pre = config.get("pretrained_dir")
    if isinstance(pre, str) and pre.split("/", 1)[0] == RESULTS_PLACEHOLDER:
        config["pretrained_dir"] = results_root(config) + pre[len(RESULTS_PLACEHOLDER) :]
    return config


def path(name: str, results: str = RESULTS, **wildcards) -> str:
    """The path of output ``name`` (a key of :data:`FILES`) under ``results``."""
    return fill(f"{results}/{FILES[name]}", **wildcards)


def tables(stage: str, results: str = RESULTS) -> dict[str, str]:
    """A stage's aggregation outputs by role (a key of :data:`TABLES`)."""
    return {role: f"{results}/{p}" for role, p in TABLES[stage].items()}


def wildcard_names(template: str) -> list[str]:
    """The wildcards of a template, in order."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def log(name: str, results: str = RESULTS, suffix: str = ".log") -> str:
    """Log template of the job that writes output ``name`` (a FILES key, or any rule name
    without wildcards): ``logs/<name>/<wildcard>/.../<wildcard>.log``."""
    wc = wildcard_names(FILES.get(name, ""))
    if not wc:
        return f"{results}/logs/{name}{suffix}"
    return f"{results}/logs/{name}/" + "/".join("{" + w + "}" for w in wc) + suffix


def benchmark(name: str, results: str = RESULTS) -> str:
    """Benchmark (``benchmark:`` tsv) template, beside :func:`log`'s naming."""
    return log(name, results, ".tsv").replace(f"{results}/logs/", f"{results}/benchmarks/", 1)


# Exported models, one folder per cell (issue #19): the layer-pruning headline checkpoint(s)
# (plain transformers folders) and the mimicked model (weights + config, mimic.model loader).
FILES["pruning_export"] = "exports/pruning/{model}/{strategy}"
FILES["mimic_export"] = "exports/mimic/{model}/{kind}-{depth}"
