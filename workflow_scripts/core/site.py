"""Site settings: what differs between machines, not between experiments.

``config/site.yaml`` (git-ignored, optional; ``config/site.example.yaml`` shows every key) is
read automatically: by the Snakefile (its ``config`` keys are merged over config.yaml, under
any ``--configfile``/``--config`` of the command line) and by the SLURM profile (partition,
account, GPU request style) and by ``make preflight`` (``gpu_mem_gb``: one GPU's memory,
which the plan's GPU memory estimates must fit), so a cluster user never edits a tracked
file - editing ``config/paper.yaml`` would mark every result ``git_dirty``. An environment
variable, where one is named, wins over the file.

``results_dir`` (top level) is the results root (e.g. a scratch folder): it joins the config
keys the file sets, with ``$LAYER_REDUNDANCY_RESULTS`` over it; ``--config results_dir=...``
wins over both (:func:`config_overrides`).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

SITE_FILE = Path(__file__).resolve().parents[2] / "config" / "site.yaml"
TOP_KEYS = ("config", "slurm", "hf_home", "gpu_mem_gb", "results_dir")
#: Keys whose value must be a positive number.
NUMBERS = ("gpu_mem_gb",)


@cache
def load(path: str | os.PathLike | None = None) -> dict:
    """The site file's content ({} when absent; ``path`` None = ``SITE_FILE``); unknown
    top-level keys are an error."""
    path = Path(SITE_FILE if path is None else path)
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed keys: {list(TOP_KEYS)}")
    for key in NUMBERS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value <= 0):  # fmt: skip
            raise ValueError(f"{path}: {key} must be a positive number (GB), not {value!r}")
    if "results_dir" in (data.get("config") or {}):
        raise ValueError(f"{path}: results_dir is a top-level key of the site file (beside "
                         "hf_home), not one under config:")  # fmt: skip
    return data


def site_file(directory: str | os.PathLike | None = None) -> Path:
    """The site file of the project in ``directory`` (None: this module's project,
    :data:`SITE_FILE`)."""
    if directory is None or Path(directory).resolve() == SITE_FILE.parents[1]:
        return SITE_FILE
    return Path(directory).resolve() / "config" / "site.yaml"


def setting(key: str, env: str | None = None, default=None, path=None):
    """``$env`` if set, else the dotted ``key`` of the site file (e.g. ``slurm.partition``),
    else ``default``."""
    if env and os.environ.get(env):
        return os.environ[env]
    node = load(path)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


SLURM_ENV = {"partition": "SBATCH_PARTITION", "account": "SBATCH_ACCOUNT", "gres": "GPU_GRES"}


def slurm(name: str) -> str:
    """The SLURM profile's ``name`` (partition, account, gres): ``$SBATCH_PARTITION`` /
    ``$SBATCH_ACCOUNT`` / ``$GPU_GRES`` if set, else the site file's ``slurm.<name>``, else ""."""
    return setting(f"slurm.{name}", SLURM_ENV[name], "")


def slurm_gpus() -> int:
    """GPUs a GPU job asks for with ``--gpus``: 1, or 0 in the ``--gres`` mode."""
    return 0 if slurm("gres") else 1


def slurm_cpus_per_task(n: int) -> int:
    """``--cpus-per-task`` of a GPU job: ``n`` in the ``--gres`` mode (which cannot use
    ``--cpus-per-gpu``), else 0 (not set)."""
    return n if slurm("gres") else 0


def config_overrides(path=None) -> dict:
    """The config keys the site file sets: its ``config:`` section and the results root
    (``$LAYER_REDUNDANCY_RESULTS``, else the file's ``results_dir``)."""
    from workflow_scripts.core.paths import RESULTS_ENV

    out = dict(load(path).get("config") or {})
    results = setting("results_dir", RESULTS_ENV, path=path)
    if results not in (None, ""):
        out["results_dir"] = str(results)
    return out
