"""The real workflow: dry runs of the default config, config errors before any job, and a tiny
grid (2 models; similarity, pruning, mimic, tables) run end to end in a temp copy of the
project: its incremental reruns, the overview, the audit of a hand-edited cell, the report."""

from __future__ import annotations

import json
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
    "outputs": ["manifest", "baseline", "cache", "similarity", "pruning", "mimic", "structured",
                "tables"],
    "models": {"tiny-a": {"pretrain": TINY_MODEL},
               "tiny-b": {"pretrain": {**TINY_MODEL, "arch": "wavlm"}}},
    "finetune": {"steps": 4, "batch_size": 8},
    "cache": {"clips": 20, "train_clips": 20, "test_clips": 20, "batch_size": 10},
    "similarity": {"n_boot": 10, "metrics": {"cosine": {}, "cka_linear": {}},
                   "blocks": {"knn_k": 2}},
    "pruning": {"strategies": {"forward": {}}, "test_clips": 12, "batch_size": 16,
                "latency": {"batch_size": 2, "warmup": 0, "repeats": 1}},
    "mimic": {"types": {"linear": {"depths": [1], "width": 8}}, "no_mimic": False,
              "targets": {"metric": None}, "stage1": {"epochs": 1, "batch_size": 16},
              "stage2": {"epochs": 1, "batch_size": 16},
              "latency": {"batch_size": 2, "warmup": 0, "repeats": 1}},
    "structured": {"targets": [0.5], "steps": 6, "batch_size": 4, "test_clips": 12,
                   "latency": {"batch_size": 2, "warmup": 0, "repeats": 1}},
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


AGGREGATIONS = {"similarity_tables", "pruning_tables", "mimic_tables", "structured_tables",
                "baseline_tables", "overview"}  # fmt: skip


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
    for kind in ("similarity", "pruning", "mimic", "structured", "baseline", "overview"):
        assert not pd.read_parquet(d / f"results/tables/{kind}.parquet").empty, kind

    # (a) nothing to do after a full run
    assert planned_jobs(d) == {}

    # (c) adding a metric runs only its cells and the aggregations that read them
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["similarity"]["metrics"]["angular_distance"] = {"reduce": "all"}
    write_config(d, cfg)
    jobs = planned_jobs(d)
    assert set(jobs) == {"similarity_cell", "similarity_tables", "overview"}
    assert sorted(jobs["similarity_cell"]) == [
        "model=tiny-a, metric=angular_distance", "model=tiny-b, metric=angular_distance"
    ]  # fmt: skip

    # (b) one model's fine-tuning lr: that model's jobs downstream and the aggregations
    del cfg["similarity"]["metrics"]["angular_distance"]
    cfg["models"]["tiny-b"]["finetune"] = {"lr": 0.001}
    write_config(d, cfg)
    jobs = planned_jobs(d)
    per_model = {"finetune", "hidden_cache", "similarity_cell", "pruning_cell", "mimic_cell",
                 "structured_cell"}  # fmt: skip
    assert set(jobs) == per_model | AGGREGATIONS
    flat = [w for rule in per_model for w in jobs[rule]]
    assert all("model=tiny-b" in w for w in flat), flat
    assert len(jobs["similarity_cell"]) == 2 and len(jobs["hidden_cache"]) == 3
    assert all(jobs[rule] == [""] for rule in AGGREGATIONS)

    # a shared setting (validation-cache clips): everything downstream of it, nothing else -
    # not the fine-tuning, not the pruning cells (forward does not read the cache), not the
    # structured cells (they distil on the training-split cache)
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["cache"]["clips"] = 16
    write_config(d, cfg)
    jobs = planned_jobs(d)
    assert set(jobs) == {"hidden_cache", "similarity_cell", "mimic_cell", "similarity_tables",
                         "mimic_tables", "structured_tables", "overview"}, jobs  # fmt: skip
    assert sorted(jobs["hidden_cache"]) == ["model=tiny-a, split=validation",
                                            "model=tiny-b, split=validation"]  # fmt: skip
    assert len(jobs["similarity_cell"]) == 4 and len(jobs["mimic_cell"]) == 2
    write_config(d, TINY)
    assert planned_jobs(d) == {}


@pytest.mark.slow
def test_overview_is_computed_from_the_tables(tiny_project):
    from workflow_scripts.core.provenance import read_provenance
    from workflow_scripts.report.aggregate import overview_table

    d = tiny_project / "results/tables"
    overview = pd.read_parquet(d / "overview.parquet")
    assert list(overview.model) == ["tiny-a", "tiny-b"]
    for col in ("blocks: cosine", "blocks: cka_linear", "prunable: forward", "best mimicker",
                "mimic: accuracy retained %", "mimic: param reduction %"):  # fmt: skip
        assert col in overview and overview[col].notna().all(), col
    again = overview_table(
        pd.read_parquet(d / "baseline.parquet"), pd.read_csv(d / "blocks.csv"),
        pd.read_parquet(d / "pruning.parquet"), pd.read_parquet(d / "mimic.parquet"),
        pd.read_parquet(d / "structured.parquet"),
        threshold=TINY.get("pruning", {}).get("threshold", 0.95),
    )  # fmt: skip
    pd.testing.assert_frame_equal(overview, again)
    md = (d / "overview.md").read_text()
    assert all(m in md for m in ("tiny-a", "tiny-b", "prunable: forward"))
    inputs = json.loads(read_provenance(d / "overview.parquet")["input_paths"])
    assert set(inputs) == {"baseline", "blocks", "pruning", "mimic", "structured"}


def run_audit(d, *args):
    return subprocess.run(
        [sys.executable, "-m", "workflow_scripts.audit", "-C", str(d), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def audit_rows(stdout) -> dict[str, str]:
    """result path -> status from the audit's table."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("results/"):
            rows[parts[1]] = parts[0]
    return rows


@pytest.mark.slow
def test_audit_finds_the_cell_edited_by_hand(tiny_project):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tiny_project
    proc = run_audit(d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = audit_rows(proc.stdout)
    cells = [p for p in rows if p.startswith("results/cells/")]
    assert len(cells) == 14 and set(rows.values()) == {"current"}, proc.stdout  # 7 per model

    # (d) a value changed by hand, metadata and modification time left as they were
    cell = d / "results/cells/similarity/tiny-a/cosine.parquet"
    original, st = cell.read_bytes(), cell.stat()
    table = pq.read_table(cell)
    values = table.column("value").to_pylist()
    values[0] += 0.25
    table = table.set_column(table.schema.get_field_index("value"), "value", pa.array(values))
    pq.write_table(table, cell)
    os.utime(cell, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        proc = run_audit(d, "--lineage", "results/cells/similarity/tiny-a/cosine.parquet")
        assert proc.returncode == 1, proc.stdout
        table, lineage = proc.stdout.split("lineage of", 1)
        bad = {p: s for p, s in audit_rows(table).items() if s != "current"}
        # the cell is tampered; the similarity table made from it no longer matches its input
        assert bad == {"results/cells/similarity/tiny-a/cosine.parquet": "TAMPERED",
                       "results/tables/similarity.parquet": "STALE"}, proc.stdout  # fmt: skip
        assert "(results/cells/similarity/tiny-a/cosine.parquet) changed since" in table
        # the lineage of one result goes back through cache, model and manifest to the corpus
        for node in (
            "results/cache/tiny-a/validation.safetensors",
            "results/finetuned/tiny-a",
            "results/data/manifest.parquet",
            "results/corpus/speech_commands_v0.02",
        ):
            assert node in lineage, lineage  # fmt: skip
    finally:
        cell.write_bytes(original)
        os.utime(cell, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
def test_report_holds_every_chart_offline(tiny_project):
    d = tiny_project
    run_smk(d, "--report", "results/report.html")
    html = (d / "results/report.html").read_text()
    charts = sorted(p.name for p in (d / "results/charts").glob("*.html"))
    assert len(charts) >= 8
    for name in charts + ["baseline.csv", "overview.csv", "pruning_summary.csv"]:
        assert name in html, name
    assert not re.search(r"<script[^>]+src=[\"']https?://", html)  # opens offline


@pytest.mark.slow
def test_cells_carry_provenance(tiny_project):
    from workflow_scripts.core.provenance import config_hash, content_hash, read_provenance

    path = tiny_project / "results/cells/similarity/tiny-a/cka_linear.parquet"
    prov = read_provenance(path)
    for key in ("config_slice", "slice_hash", "git_commit", "git_dirty", "packages",
                "inputs_sha256", "seed", "device", "host", "start_time", "end_time", "rule",
                "wildcards", "content_hash"):  # fmt: skip
        assert key in prov, key
    import json

    cell = json.loads(prov["config_slice"])
    assert cell["metric"] == "cka_linear" and prov["slice_hash"] == config_hash(cell)
    assert "cache" in json.loads(prov["inputs_sha256"])
    assert json.loads(prov["packages"])["torch"] == "2.9.1"
    assert prov["content_hash"] == content_hash(pd.read_parquet(path))
    assert prov["start_time"] <= prov["end_time"]
