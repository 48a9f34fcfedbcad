"""Helpers shared by all rules: one config validation, per-cell params, paths, resources.

Every stage's torch-free plan (``workflow_scripts/<stage>/plan.py``) decides its cells, their
config slices and inputs; every output path comes from ``workflow_scripts/core/paths.py``.
"""

import os
import sys

sys.path.insert(0, workflow.basedir)

from workflow_scripts import grid
from workflow_scripts.core import paths, site
from workflow_scripts.core.code import planned_code
from workflow_scripts.core.sources import Source, digests as source_digests
from workflow_scripts.core.config import ConfigError, cell_json

data = grid.plan("data")
backbones = grid.plan("backbones")
similarity = grid.plan("similarity")
pruning = grid.plan("pruning")
mimic = grid.plan("mimic")
structured = grid.plan("structured")
aggregate = grid.plan("report")

# config.yaml < --configfile files < config/site.yaml (git-ignored machine settings: they win
# over every shipped grid config; $LAYER_REDUNDANCY_RESULTS over its results_dir) < --config
# key=value pairs.
grid.assemble(
    config,
    site.config_overrides(),
    workflow.config_settings.overwrite_config or {},
    getattr(workflow.config_settings, "config", None) or {},
)
if site.setting("hf_home"):
    os.environ.setdefault("HF_HOME", str(site.setting("hf_home")))

try:
    grid.validate(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# The results root (config `results_dir`, default results/): every output, log and benchmark
# path below is under it; relative = relative to the working directory.
RESULTS = paths.results_root(config)


def path(name, **wildcards):
    """An output path template (``core.paths.FILES``) under the results root."""
    return paths.path(name, RESULTS, **wildcards)


def log(name):
    return paths.log(name, RESULTS)


def bench(name):
    return paths.benchmark(name, RESULTS)


def wildcards_of(w):
    return dict(w.items())


def slice_of(fn):
    """A ``params`` function: the canonical JSON of ``fn(config, **wildcards)``, the cell's
    config slice and nothing else (so editing another cell never reruns this one)."""
    return lambda w: cell_json(fn(config, **wildcards_of(w)))


def _ancient_sources(value):
    """Source inputs (files that no job makes) as ``ancient()``: their digests, not their
    modification times, decide (``params.sources``)."""
    if isinstance(value, list):
        return [_ancient_sources(v) for v in value]
    return ancient(value) if isinstance(value, Source) else value


def inputs_of(fn):
    """An ``input`` function: ``fn(config, results=RESULTS, **wildcards)`` (unpack it)."""
    return lambda w: {
        k: _ancient_sources(v)
        for k, v in fn(config, results=RESULTS, **wildcards_of(w)).items()
    }


def sources_of(fn):
    """A ``params`` function: path -> SHA-256 of the source inputs ``fn`` gives (model
    weights, a real data root), as canonical JSON: new weights rerun the job."""
    return lambda w: cell_json(
        source_digests(fn(config, results=RESULTS, **wildcards_of(w)))
    )


def code_of(script, modules=None):
    """A ``params`` value: the code a job of this rule will load (``workflow_scripts.core.code``),
    file -> digest of its AST without docstrings. ``script``: the rule script's name;
    ``modules``: a plan function ``(config, **wildcards)`` giving the modules the cell's
    registry entries name. A change to any of them reruns the job; a comment does not.
    """
    if modules is None:
        return cell_json(planned_code(script))
    return lambda w: cell_json(planned_code(script, modules(config, **wildcards_of(w))))


def table_outputs(stage):
    """A stage's aggregation outputs by role; those with a caption enter the HTML report."""
    out = {}
    for role, p in paths.tables(stage, RESULTS).items():
        caption = paths.CAPTIONS.get((stage, role))
        if caption:
            p = report(
                p,
                category=paths.CATEGORIES[stage],
                caption=f"../workflow_scripts/report/captions/{caption}",
            )
        out[role] = p
    return out


def gpu_request(wildcards):
    """GPUs a model job asks for: the model's `resources.gpu`, else 0 (CPU)."""
    spec = config["models"].get(getattr(wildcards, "model", ""), {})
    return spec.get("resources", {}).get("gpu", 0)


def model_params(model):
    """Estimated parameter count of a configured model (workflow_scripts.core.resources)."""
    from workflow_scripts.core.resources import estimate_params

    return estimate_params(config["models"][model])


def model_mem_mb(base_mb, mb_per_mparam=40):
    """A `mem_mb` resource for a model job: base + per million parameters (or the model's
    `resources.mem_mb`), times the attempt (retries ask for more)."""
    from workflow_scripts.core.resources import mem_mb

    def mem(wildcards, attempt):
        spec = config["models"][wildcards.model]
        override = spec.get("resources", {}).get("mem_mb")
        return mem_mb(
            model_params(wildcards.model), base_mb, mb_per_mparam, attempt, override
        )

    return mem


def model_runtime(base_min):
    """A `runtime` resource (minutes) for a model job: base_min for a base-sized model, in
    proportion to the parameter count above it (or the model's `resources.runtime`), times
    the attempt."""
    from workflow_scripts.core.resources import runtime_min

    def runtime(wildcards, attempt):
        spec = config["models"][wildcards.model]
        override = spec.get("resources", {}).get("runtime")
        return runtime_min(model_params(wildcards.model), base_min, attempt, override)

    return runtime


def disk_mb(fn, floor_mb=10):
    """A `disk_mb` resource: the predicted bytes of a job's outputs, ``fn(config,
    **wildcards, results=RESULTS)`` (the estimates `make plan` reports), times the attempt.
    """
    from workflow_scripts.core.sizes import mb

    def disk(wildcards, attempt):
        return max(floor_mb, mb(fn(config, results=RESULTS, **wildcards_of(wildcards))))

    return disk


def similarity_mem_mb(base_mb, mb_per_mparam=20):
    """`mem_mb` of a similarity cell: a model job's memory plus the N x N Gram matrices of
    every state (8 (L+1) N^2 bytes; N = the similarity's utterances), which CKA and mutual
    kNN need by design - the one request that grows with the number of clips."""
    from workflow_scripts.core.sizes import mb, model_dims

    model_mem = model_mem_mb(base_mb, mb_per_mparam)

    def mem(wildcards, attempt):
        n = backbones.split_size(
            config, "validation", backbones.cache_clips(config, "validation"), RESULTS
        )
        for cap in (config["similarity"]["clips"], config["similarity"]["batch_size"]):
            n = min(n, cap) if cap else n
        layers = model_dims(config["models"][wildcards.model])["layers"]
        return model_mem(wildcards, attempt) + mb(8 * (layers + 1) * n * n) * attempt

    return mem


def attempt_mem_mb(base_mb):
    """A `mem_mb` resource for a job without a model: base_mb times the attempt."""
    return lambda wildcards, attempt: base_mb * attempt
