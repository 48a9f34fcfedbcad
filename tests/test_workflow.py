"""The real workflow: dry runs of the default config, config errors before any job, and a tiny
grid run end to end in a temp copy of the project with its incremental reruns."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
COPY = ["Snakefile", "rules", "workflow_scripts", "config", "envs", "profiles"]


def run_smk(cwd, *args, check=True, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [SNAKEMAKE, "--cores", "2", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )  # fmt: skip
    if check and proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"snakemake {args} failed:\n{tail}")
    return proc


def planned_jobs(cwd) -> dict[str, list[str]]:
    """rule -> list of wildcard strings of the jobs a dry run would execute."""
    out = run_smk(cwd, "-n").stdout
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[|rule |localrule )", out):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        wc = re.search(r"wildcards: (.*)", block)
        jobs.setdefault(m.group(1), []).append(wc.group(1) if wc else "")
    return jobs


def test_default_config_dry_run():
    jobs = planned_jobs(ROOT)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    n_models, n_metrics = len(cfg["models"]), len(cfg["similarity"]["metrics"])
    # nothing may be done already in a developer's checkout, so count only what is planned
    assert len(jobs.get("similarity_cell", [])) in (0, n_models * n_metrics)
    out = run_smk(ROOT, "-n", "--forceall", "--quiet", "rules").stdout
    assert re.search(rf"similarity_cell\s+{n_models * n_metrics}\b", out), out
    assert re.search(rf"finetune\s+{n_models}\b", out), out


def test_bad_config_stops_before_any_job(tmp_path):
    for name in COPY:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["similarity"]["metrics"]["cosinus"] = {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_smk(tmp_path, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "config.similarity.metrics: unknown key(s) ['cosinus']" in text
    assert "allowed keys" in text and "cka_linear" in text
    assert not (tmp_path / "results").exists()


TINY_MODEL = {"arch": "hubert", "layers": 3, "hidden": 32, "heads": 2, "ffn": 64,
              "conv_dim": [16, 32, 32], "steps": 3, "batch_size": 8, "clusters": 8}  # fmt: skip
TINY = {
    "corpus": {"speakers": 12, "seed": 1, "validation_percentage": 30, "testing_percentage": 30,
               "words": ["yes", "no", "up"], "voices": ["en-us", "en-029"], "variants": ["", "m3"]},
    "outputs": ["manifest", "baseline", "cache", "similarity"],
    "models": {"tiny-a": {"pretrain": TINY_MODEL},
               "tiny-b": {"pretrain": {**TINY_MODEL, "arch": "wavlm"}}},
    "finetune": {"steps": 4, "batch_size": 8},
    "cache": {"clips": 20, "batch_size": 10},
    "similarity": {"n_boot": 10, "metrics": {"cosine": {}, "cka_linear": {}},
                   "blocks": {"knn_k": 2}},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A copy of the workflow with the tiny config, run once to completion."""
    d = tmp_path_factory.mktemp("wf")
    for name in COPY:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / name)
    (d / "config.yaml").write_text(yaml.safe_dump(TINY))
    run_smk(d)
    return d


def write_config(d, cfg):
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_tiny_grid_runs_and_reruns_only_what_changed(tiny_project):
    d = tiny_project
    for m in ("tiny-a", "tiny-b"):
        base = pd.read_parquet(d / f"results/cells/baseline/{m}.parquet")
        assert set(base.split) == {"validation", "testing"}
        for metric in ("cosine", "cka_linear"):
            cell = pd.read_parquet(d / f"results/cells/similarity/{m}/{metric}.parquet")
            assert len(cell) == 16 and cell.value.notna().all()  # (3 + 1)^2 layer pairs
    blocks = pd.read_csv(d / "results/tables/blocks.csv")
    assert set(blocks.model) == {"tiny-a", "tiny-b"}
    assert (d / "results/charts/similarity.png").stat().st_size > 1000

    # (a) nothing to do after a full run
    assert planned_jobs(d) == {}

    # (b) adding a metric runs only its cells and the aggregation: the cache is reused
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["similarity"]["metrics"]["angular_distance"] = {"reduce": "all"}
    write_config(d, cfg)
    jobs = planned_jobs(d)
    assert set(jobs) == {"similarity_cell", "similarity_tables"}
    assert sorted(jobs["similarity_cell"]) == [
        "model=tiny-a, metric=angular_distance", "model=tiny-b, metric=angular_distance"
    ]  # fmt: skip

    # (c) one model's fine-tuning lr: that model's jobs downstream, nothing of the other
    del cfg["similarity"]["metrics"]["angular_distance"]
    cfg["models"]["tiny-b"]["finetune"] = {"lr": 0.001}
    write_config(d, cfg)
    jobs = planned_jobs(d)
    assert set(jobs) == {"finetune", "hidden_cache", "similarity_cell", "similarity_tables"}
    flat = [w for rule in ("finetune", "hidden_cache", "similarity_cell") for w in jobs[rule]]
    assert all("model=tiny-b" in w for w in flat) and len(jobs["similarity_cell"]) == 2
    write_config(d, TINY)
    assert planned_jobs(d) == {}


@pytest.mark.slow
def test_cells_carry_provenance(tiny_project):
    from workflow_scripts.provenance import config_hash, content_hash, read_provenance

    path = tiny_project / "results/cells/similarity/tiny-a/cka_linear.parquet"
    prov = read_provenance(path)
    for key in ("cell_config", "cell_hash", "git_commit", "git_dirty", "packages",
                "inputs_sha256", "seed", "device", "host", "start_time", "end_time", "rule",
                "wildcards", "content_hash"):  # fmt: skip
        assert key in prov, key
    import json

    cell = json.loads(prov["cell_config"])
    assert cell["metric"] == "cka_linear" and prov["cell_hash"] == config_hash(cell)
    assert "cache" in json.loads(prov["inputs_sha256"])
    assert json.loads(prov["packages"])["torch"] == "2.9.1"
    assert prov["content_hash"] == content_hash(pd.read_parquet(path))
    assert prov["start_time"] <= prov["end_time"]
