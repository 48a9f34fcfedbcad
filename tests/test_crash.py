"""After a crash: a run killed mid-job (SIGKILL to Snakemake's whole process group, as when a
login node or a laptop goes down) leaves Snakemake's lock; the next run refuses to start until
`snakemake --unlock`, then the same command completes (the profiles set rerun-incomplete: the
killed job's outputs are remade) and every result reads back - nothing partial is visible.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, SNAKEMAKE, TINY, project_copy, run_smk, smk_env

from workflow_scripts.core import paths

pytestmark = pytest.mark.slow

MODEL = "hubert-small"
# TINY trimmed to two stages and one shipped backbone: corpus, manifest, fine-tuning (+ its
# baseline cell)
CONFIG = {**TINY, "models": {MODEL: {"hf": f"models/{MODEL}"}}, "outputs": ["manifest", "baseline"]}


@pytest.mark.parametrize(
    "profile", ["profiles/local/config.yaml", "profiles/slurm/config.v9+.yaml"]
)
def test_profiles_rerun_incomplete_jobs(profile):
    assert yaml.safe_load((ROOT / profile).read_text())["rerun-incomplete"] is True


def start(cwd: Path) -> subprocess.Popen:
    """``snakemake --profile profiles/local --cores 2`` in its own process group."""
    return subprocess.Popen(
        [SNAKEMAKE, "--profile", "profiles/local", "--cores", "2"], cwd=cwd, env=smk_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for(cond, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before the kill:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout} s")


def test_killed_run_unlock_and_rerun(tmp_path):
    d = project_copy(tmp_path / "p", CONFIG)
    finetune_log = d / paths.log("finetuned").format(model=MODEL)
    proc = start(d)
    try:
        # kill while the fine-tuning job runs: its outputs do not exist yet
        wait_for(finetune_log.exists, proc, timeout=120)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    cell = d / paths.path("baseline_cell", model=MODEL)
    assert not cell.exists()

    locked = run_smk(d, "--profile", "profiles/local", check=False)
    assert locked.returncode != 0
    assert "cannot be locked" in locked.stdout + locked.stderr

    run_smk(d, "--unlock")
    done = run_smk(d, "--profile", "profiles/local")
    assert "Nothing to be done" not in done.stdout + done.stderr
    assert "finetune" in done.stdout + done.stderr  # the killed job was run again

    # every result reads back, and no partial folder or file is left at an output's place
    parquets = sorted((d / "results").rglob("*.parquet"))
    assert cell in parquets and (d / paths.path("manifest")) in parquets
    for p in parquets:
        assert len(pd.read_parquet(p)) > 0, p
    assert not list((d / "results").rglob("*.partial"))
    model_dir = d / paths.path("finetuned", model=MODEL)
    assert (model_dir / "DONE").is_file() and (model_dir / "model.safetensors").is_file()
    # a dry run plans nothing: the finished state is complete and consistent
    again = run_smk(d, "--profile", "profiles/local", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
