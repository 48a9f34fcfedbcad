"""The SLURM profile against a real single-node SLURM (slurmctld + slurmd + munged, one fake
GPU; tests/slurm_cluster.py): the tiny grid runs through `snakemake --profile slurm` from the
project root, every job goes through sbatch, GPU rules ask for --gpus=1 and CPU rules for
none, a failing job is reported and retried with more memory, and the results equal those
of a local run of the same config.

The profile's other GPU mode (`GPU_GRES=gpu:1`: `--gres=gpu:1 --cpus-per-task`, no --gpus)
runs on a cluster that refuses --gpus and --cpus-per-gpu (select/cons_res). select/linear
refuses them too and accepts the gres request, but in Slurm 22.05 a job step inside such a
job (the plugin's inner srun) fails there with "Invalid generic resource (gres)
specification" unless it passes --gres=none, so a whole run is not tried on it.

Skipped only when not root or the Debian packages (slurmctld slurmd slurm-client munge) are
absent; .ci/run installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT, TINY, project_copy
from slurm_cluster import SlurmCluster, missing_tools

from workflow_scripts.core import paths

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0, reason="a test SLURM needs root"
    ),
    pytest.mark.skipif(bool(missing_tools()), reason=f"SLURM/munge absent: {missing_tools()}"),
]

GPU_RULES = {"pretrain_backbone", "finetune", "hidden_cache", "pruning_cell", "mimic_cell",
             "structured_cell"}  # fmt: skip
TIMEOUT = 240  # seconds for the SLURM run (about 140 s on 2 busy cores at load 7; 170+ at load 9)
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
    one_cpu = {
        "cpus_per_gpu": 1,
        "cpus_per_task": "1 if __import__('os').environ.get('GPU_GRES') else 0",
    }
    set_resources = {r: {**res, **one_cpu} for r, res in real["set-resources"].items()}
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


def slurm_env(cluster, **extra: str) -> dict:
    env = {**cluster.env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "GPU_GRES"):
        env.pop(var, None)
    env.update(extra)
    return env


def run_profile(cluster, project: Path, overrides: Path, env: dict, *args: str) -> str:
    """The user's literal command (`snakemake --profile slurm -j 64` from the project root)
    plus the test's overrides and ``args``; its output. Snakemake ignores SIGTERM while jobs
    run: a hard timeout kills it, and the cluster fixture scancels whatever is left."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, "--profile", "slurm", "-j", "64",
             "--profile", str(overrides), *args],
            cwd=project, env=env, capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() + (err.stderr or b"").decode()
        pytest.fail(f"SLURM run over {TIMEOUT} s:\n{out[-5000:]}\n{cluster.logs()}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{cluster.logs()}"
    return out


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, tiny_corpus):
    """The same tiny config run through SLURM and, at the same time, locally."""
    base = tmp_path_factory.mktemp("runs")
    config = tiny_config(Path(tiny_corpus[0]))
    on_slurm, local = copy_project(base / "slurm", config), copy_project(base / "local", config)
    overrides = write_test_profile(base / "overrides")
    env = slurm_env(cluster, LR_FAIL_ONCE=FAIL_ONCE)
    local_proc = subprocess.Popen(  # niced: the SLURM job chain is the critical path
        ["nice", "-n", "10", str(Path(sys.executable).parent / "snakemake"),
         "--profile", "profiles/local", "--cores", "1"],
        cwd=local, env={**env, "PATH": os.environ["PATH"]}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out = run_profile(cluster, on_slurm, overrides, env)
        local_out, _ = local_proc.communicate(timeout=TIMEOUT)
    finally:
        if local_proc.poll() is None:
            local_proc.kill()
    assert local_proc.returncode == 0, local_out[-4000:]
    return {"slurm": on_slurm, "local": local, "out": out}


@pytest.fixture(scope="module")
def gres_cluster(tmp_path_factory):
    """A cluster whose node selection (select/cons_res) refuses --gpus and --cpus-per-gpu."""
    c = SlurmCluster(tmp_path_factory.mktemp("slurm-gres"), cpus=4, select="cons_res")
    try:
        c.start(timeout=60)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def gres_run(gres_cluster, runs, tmp_path_factory):
    """The profile in its --gres mode (GPU_GRES=gpu:1) on that cluster: the fine-tuning job
    (a GPU rule) once more, in a copy of the first run's finished project."""
    base = tmp_path_factory.mktemp("gres-run")
    project = base / "slurm"
    shutil.copytree(runs["slurm"], project, symlinks=True)
    overrides = write_test_profile(base / "overrides")
    env = slurm_env(gres_cluster, GPU_GRES="gpu:1")
    target = paths.path("baseline_cell", model=MODEL)
    out = run_profile(gres_cluster, project, overrides, env, target, "--forcerun", "finetune")
    return {"slurm": project, "out": out}


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
            assert "--cpus-per-gpu=1" in c["line"] and "--gres" not in c["line"]
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
    assert len(cells) == 4  # baseline, its test predictions, 2 similarity cells
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


def test_gres_mode_on_a_cluster_that_refuses_gpus(gres_run, gres_cluster):
    # the cluster really refuses the default mode's flags
    for flags in (["--gpus=1"], ["--gres=gpu:1", "--cpus-per-gpu=1"]):
        refused = gres_cluster.sbatch("--test-only", *flags, "--wrap", "true")
        assert refused.returncode != 0 and "unsupported" in refused.stderr, refused.stderr
    calls = [c for c in sbatch_calls(gres_cluster) if c["rule"]]
    assert [c["rule"] for c in calls] == ["finetune"], calls
    line = calls[0]["line"]
    assert "--gpus" not in line and "--cpus-per-gpu" not in line, line
    assert re.findall(r"--gres=(\S+)", line) == ["gpu:1"] and "--cpus-per-task=1" in line, line
    assert not any("--gpus" in s for s in gres_cluster.calls_of("srun"))
    # the job step inherited the job's GPU: the cell was made with it visible
    from workflow_scripts.core.provenance import read_provenance

    prov = read_provenance(gres_run["slurm"] / f"results/cells/baseline/{MODEL}.parquet")
    assert prov["cuda_visible_devices"] == "0"
    assert prov["slurm_job_id"] in submissions(gres_run["out"])


def test_select_linear_refuses_gpus_and_accepts_the_gres_request(tmp_path):
    c = SlurmCluster(tmp_path / "linear", cpus=4, select="linear")
    try:
        c.start(timeout=60)
        refused = c.sbatch("--test-only", "--gpus=1", "--cpus-per-gpu=1", "--wrap", "true")
        assert refused.returncode != 0 and "unsupported" in refused.stderr, refused.stderr
        accepted = c.sbatch("--test-only", "--gres=gpu:1", "--cpus-per-task=1", "--wrap", "true")
        assert accepted.returncode == 0, accepted.stderr
    finally:
        c.stop()
