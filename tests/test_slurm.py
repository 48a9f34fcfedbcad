"""The SLURM profile against a real single-node SLURM (slurmctld + slurmd + munged, one fake
GPU; tests/slurm_cluster.py): the tiny grid runs through `snakemake --profile slurm` from the
project root, every job goes through sbatch, GPU rules ask for --gpus=1 and CPU rules for
none, a failing job is reported and retried with more memory, and the results equal those
of a local run of the same config.

Skipped only when not root or the Debian packages (slurmctld slurmd slurm-client munge) are
absent; .ci/run installs them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT, TINY, project_copy
from slurm_cluster import SlurmCluster, missing_tools

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0, reason="a test SLURM needs root"
    ),
    pytest.mark.skipif(bool(missing_tools()), reason=f"SLURM/munge absent: {missing_tools()}"),
]

GPU_RULES = {"pretrain_backbone", "finetune", "hidden_cache", "pruning_cell", "mimic_cell",
             "structured_cell"}  # fmt: skip
TIMEOUT = 170  # seconds for the SLURM run (about 140 s on 2 busy cores, load 7)
MODEL = "hubert-small"  # the shipped backbone: no pretraining job, so a shorter job chain


def tiny_config(corpus_root: Path) -> dict:
    """TINY's fine-tuning, cache and similarity settings on one shipped backbone and the
    session's tiny corpus (given as data.root, so no corpus job): 7 SLURM jobs in 5 steps."""
    words = [w for w in TINY["corpus"]["words"] if (corpus_root / w).is_dir()]
    return {
        "data": {"root": str(corpus_root)},
        "corpus": {"words": words},
        "outputs": ["manifest", "baseline", "cache", "similarity"],
        "models": {MODEL: {"hf": str(ROOT / "models" / MODEL)}},
        "finetune": TINY["finetune"],
        "cache": {"clips": 20, "batch_size": 10},
        "similarity": {**TINY["similarity"], "metrics": {"cosine": {}, "cka_linear": {}}},
    }


# A transient failure of one job: the srun wrapper exits non-zero once for this step.
FAIL_ONCE = f"similarity_cell:model={MODEL},metric=cka_linear"

# Snakemake with the real SLURM executor plugin, whose status polling backs off by +10 s per
# idle check (up to 180 s); the test caps that back-off at 2 s, so that a chain of seven short
# jobs takes seconds per job, not half a minute. Nothing else of the plugin is changed.
RUNNER = """
import sys
import snakemake_executor_plugin_slurm as slurm
from snakemake.cli import main
prop = slurm.Executor.next_seconds_between_status_checks
slurm.Executor.next_seconds_between_status_checks = property(
    prop.fget, lambda self, v: prop.fset(self, min(v, 2)))
sys.argv[0] = "snakemake"
sys.exit(main())
"""


def copy_project(dest: Path, config: dict) -> Path:
    project_copy(dest, config)
    os.symlink(os.readlink(ROOT / "slurm"), dest / "slurm")  # the profile link, as committed
    return dest


def write_test_profile(dest: Path) -> Path:
    """A second profile layered over `slurm`: squeue for status (no slurmdbd here), a short
    first status check, one CPU per GPU job (the test node has 4)."""
    real = yaml.safe_load((ROOT / "profiles/slurm/config.v9+.yaml").read_text())
    set_resources = {r: {**res, "cpus_per_gpu": 1} for r, res in real["set-resources"].items()}
    over = {
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "latency-wait": 5,
        "set-resources": set_resources,
        "set-threads": {r: 1 for r in real["set-threads"]},
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(over))
    return dest


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=4, min_job_age=300)
    try:
        c.start(timeout=60)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, tiny_corpus):
    """The same tiny config run through SLURM and, at the same time, locally."""
    base = tmp_path_factory.mktemp("runs")
    config = tiny_config(Path(tiny_corpus[0]))
    on_slurm, local = copy_project(base / "slurm", config), copy_project(base / "local", config)
    overrides = write_test_profile(base / "overrides")
    env = {**cluster.env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LR_FAIL_ONCE": FAIL_ONCE}  # fmt: skip
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT"):
        env.pop(var, None)
    local_proc = subprocess.Popen(  # niced: the SLURM job chain is the critical path
        ["nice", "-n", "10", str(Path(sys.executable).parent / "snakemake"),
         "--profile", "profiles/local", "--cores", "1"],
        cwd=local, env={**env, "PATH": os.environ["PATH"]}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # the user's literal command (from the project root), plus the test's overrides;
        # Snakemake ignores SIGTERM while jobs run: a hard timeout kills it, and the cluster
        # fixture scancels whatever is left
        try:
            proc = subprocess.run(
                [sys.executable, "-c", RUNNER, "--profile", "slurm", "-j", "64",
                 "--profile", str(overrides)],
                cwd=on_slurm, env=env, capture_output=True, text=True, timeout=TIMEOUT,
            )  # fmt: skip
        except subprocess.TimeoutExpired as err:
            out = (err.stdout or b"").decode() + (err.stderr or b"").decode()
            pytest.fail(f"SLURM run over {TIMEOUT} s:\n{out[-5000:]}\n{cluster.logs()}")
        local_out, _ = local_proc.communicate(timeout=TIMEOUT)
    finally:
        if local_proc.poll() is None:
            local_proc.kill()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{cluster.logs()}"
    assert local_proc.returncode == 0, local_out[-4000:]
    return {"slurm": on_slurm, "local": local, "out": out}


def submissions(out: str) -> dict[str, str]:
    """SLURM job id -> Snakemake job id, from Snakemake's submission lines."""
    pattern = r"Job (\d+) has been submitted with SLURM jobid (\d+)"
    return {slurm_id: job for job, slurm_id in re.findall(pattern, out)}


def sbatch_calls(cluster) -> list[dict]:
    """One entry per sbatch call: its rule (from the --comment), wildcards and flags."""
    calls = []
    for line in cluster.calls_of("sbatch"):
        comment = re.search(r"--comment '?rule_(\w+?)(?:_wildcards_([^' ]*))?'? ", line)
        calls.append({"line": line, "rule": comment.group(1) if comment else None,
                      "wildcards": comment.group(2) if comment else None})  # fmt: skip
    return calls


def test_jobs_go_through_sbatch_with_gpus_for_gpu_rules(runs, cluster):
    calls = sbatch_calls(cluster)
    rules = {c["rule"] for c in calls}
    assert rules == {"manifest", "finetune", "hidden_cache", "similarity_cell",
                     "similarity_tables"}, calls  # fmt: skip
    for c in calls:
        gpus = re.findall(r"--gpus=(\d+)", c["line"])
        if c["rule"] in GPU_RULES:
            assert gpus == ["1"], c["line"]
            assert "--cpus-per-gpu=1" in c["line"]
        else:
            assert gpus == [] and "--gres" not in c["line"], c["line"]
        assert re.search(r" --mem \d+", c["line"]) and re.search(r" -t \d+", c["line"])
    # the inner job step of a GPU job asks for the GPU too
    assert any("--gpus=1" in s for s in cluster.calls_of("srun"))

    # every result carries the id of the SLURM job that made it, and that job exists
    ids = submissions(runs["out"])
    known = set(cluster.job_ids())
    from workflow_scripts.core.provenance import read_provenance

    cells = sorted((runs["slurm"] / "results/cells").rglob("*.parquet"))
    assert len(cells) == 3  # baseline + 2 similarity cells
    for path in cells:
        prov = read_provenance(path)
        assert prov["slurm_job_id"] in ids and prov["slurm_job_id"] in known, (path, prov)
        assert "cudnn_benchmark" in prov and "cudnn_deterministic" in prov
    gpu_cell = read_provenance(runs["slurm"] / f"results/cells/baseline/{MODEL}.parquet")
    assert gpu_cell["cuda_visible_devices"] == "0"  # finetune ran with the (fake) GPU
    sim_cell = read_provenance(runs["slurm"] / f"results/cells/similarity/{MODEL}/cosine.parquet")
    assert sim_cell["cuda_visible_devices"] == ""  # a CPU rule got no GPU
    local_cell = read_provenance(runs["local"] / f"results/cells/baseline/{MODEL}.parquet")
    assert local_cell["slurm_job_id"] == ""
    # one SLURM log per job, kept under results/logs/slurm/<rule>/<wildcards>/<id>.log
    logs = {p.stem for p in (runs["slurm"] / "results/logs/slurm").rglob("*.log")}
    assert set(ids) <= logs


def test_failed_job_is_reported_and_retried_with_more_memory(runs, cluster):
    out = runs["out"]
    assert re.search(r"Error in rule similarity_cell", out), out[-4000:]
    assert "Trying to restart job" in out
    fails = [s for s in cluster.calls_of("srun") if FAIL_ONCE in s]
    assert len(fails) == 2  # the failed attempt and the successful retry
    tries = [
        c for c in sbatch_calls(cluster)
        if c["rule"] == "similarity_cell" and "cka_linear" in (c["wildcards"] or "")
    ]  # fmt: skip
    assert len(tries) == 2
    mem = [int(re.search(r" --mem (\d+)", c["line"]).group(1)) for c in tries]
    assert mem[1] == 2 * mem[0]  # attempt 2 asks for twice the memory
    assert (runs["slurm"] / f"results/cells/similarity/{MODEL}/cka_linear.parquet").exists()


def test_results_equal_a_local_run(runs):
    for rel in (f"results/cells/similarity/{MODEL}/cosine.parquet",
                f"results/cells/similarity/{MODEL}/cka_linear.parquet",
                f"results/cells/baseline/{MODEL}.parquet"):  # fmt: skip
        a = pd.read_parquet(runs["slurm"] / rel)
        b = pd.read_parquet(runs["local"] / rel)
        assert list(a.columns) == list(b.columns) and len(a) == len(b)
        for col in a.columns:
            if re.search(r"time|second|latency", col):
                continue
            if pd.api.types.is_numeric_dtype(a[col]):
                np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-6, err_msg=col)
            else:
                assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col
    blocks_a = pd.read_csv(runs["slurm"] / "results/tables/blocks.csv")
    blocks_b = pd.read_csv(runs["local"] / "results/tables/blocks.csv")
    pd.testing.assert_frame_equal(blocks_a, blocks_b)
