"""Helpers shared by the tests that run the real workflow: Snakemake in a subprocess, a copy
of the project with another config, the jobs a dry run plans, and the tiny grid."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
# What a copy of the project needs to run (tests never write into the checkout's results/).
COPY = ["Snakefile", "rules", "workflow_scripts", "config", "envs", "profiles", "models"]


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def smk_env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # the developer's cluster settings and results root never reach a test's run
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "LAYER_REDUNDANCY_RESULTS"):
        env.pop(var, None)
    return env


def run_smk(cwd, *args, check=True, timeout=900) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 *args`` in ``cwd``; raises with the output's tail if it fails
    and ``check``."""
    proc = subprocess.run(
        [SNAKEMAKE, "--cores", "2", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=smk_env(),
    )  # fmt: skip
    if check and proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"snakemake {args} failed:\n{tail}")
    return proc


def project_copy(d: Path, cfg: dict | None = None) -> Path:
    """A copy of the workflow in ``d`` (the shipped models linked, not copied), with ``cfg``
    as its config.yaml when given; the checkout's own config/site.yaml (machine settings:
    data root, results root) is not copied."""
    d.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = ROOT / name
        if name == "models":
            (d / name).symlink_to(src)
        elif src.is_dir():
            shutil.copytree(src, d / name,
                            ignore=shutil.ignore_patterns("__pycache__", "site.yaml"))  # fmt: skip
        else:
            shutil.copy(src, d / name)
    write_config(d, default_config() if cfg is None else cfg)
    return d


def write_config(d: Path, cfg: dict) -> None:
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def job_blocks(out: str) -> list[dict]:
    """One dict per job of a dry run's output: rule, wildcards, resources (as text)."""
    from workflow_scripts.resource_plan import parse_jobs

    return parse_jobs(out)


def planned_jobs(cwd, *args) -> dict[str, list[str]]:
    """rule -> wildcard strings of the jobs a dry run (``-n *args``) would execute."""
    jobs: dict[str, list[str]] = {}
    for job in job_blocks(run_smk(cwd, "-n", *args).stdout):
        jobs.setdefault(job["rule"], []).append(job["wildcards"])
    return jobs


def rule_counts(cwd, *args) -> dict[str, int]:
    """rule -> number of jobs, from ``snakemake -n --quiet rules *args``."""
    out = run_smk(cwd, "-n", "--quiet", "rules", *args).stdout
    counts = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) not in ("total", "job", "count"):
            counts[m.group(1)] = int(m.group(2))
    return counts


TINY_MODEL = {"arch": "hubert", "layers": 3, "hidden": 32, "heads": 2, "ffn": 64,
              "conv_dim": [16, 32, 32], "steps": 3, "batch_size": 8, "clusters": 8}  # fmt: skip
# The tiny grid: 2 self-pretrained models, every stage, seconds per job.
TINY = {
    "corpus": {"speakers": 12, "seed": 1, "validation_percentage": 30, "testing_percentage": 30,
               "words": ["yes", "no", "up"], "voices": ["en-us", "en-029"], "variants": ["", "m3"]},
    "outputs": ["manifest", "baseline", "cache", "similarity", "pruning", "mimic", "structured",
                "tables"],
    "models": {"tiny-a": {"pretrain": TINY_MODEL},
               "tiny-b": {"pretrain": {**TINY_MODEL, "arch": "wavlm"}}},
    "finetune": {"steps": 4, "batch_size": 8},
    "cache": {"clips": 20, "train_clips": 20, "batch_size": 10},
    "evaluation": {"test_clips": 12},
    "similarity": {"n_boot": 10, "metrics": {"cosine": {}, "cka_linear": {}},
                   "blocks": {"knn_k": 2}},
    "pruning": {"strategies": {"forward": {}}, "batch_size": 16,
                "latency": {"batch_size": 2, "warmup": 0, "repeats": 1}},
    "mimic": {"types": {"linear": {"depths": [1], "width": 8}}, "no_mimic": False,
              "targets": {"metric": None}, "stage1": {"epochs": 1, "batch_size": 16},
              "stage2": {"epochs": 1, "batch_size": 16},
              "latency": {"batch_size": 2, "warmup": 0, "repeats": 1}},
    "structured": {"targets": [0.5], "steps": 6, "batch_size": 4,
                   "latency": {"batch_size": 2, "warmup": 0, "repeats": 1}},
}  # fmt: skip
