"""The real workflow: dry runs of the default config, config errors before any job, and a tiny
grid (2 models; similarity, pruning, mimic, tables) run end to end in a temp copy of the
project: its incremental reruns, the overview, the audit of a hand-edited cell, the report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from helpers import (
    ROOT,
    TINY,
    default_config,
    planned_jobs,
    project_copy,
    run_smk,
    write_config,
)


def test_default_config_plans_the_whole_grid(default_plan):
    """The default config's dry run plans one job per cell of every stage, computed here from
    the config itself."""
    cfg = default_config()
    models = len(cfg["models"])
    mim = cfg["mimic"]
    n_mimic = sum(len(t["depths"]) for t in mim["types"].values()) + bool(mim["no_mimic"])
    expected = {
        "synthesize_corpus": 1, "manifest": 1, "finetune": models, "hidden_cache": 3 * models,
        "similarity_cell": models * len(cfg["similarity"]["metrics"]),
        "pruning_cell": models * len(cfg["pruning"]["strategies"]),
        "mimic_cell": models * n_mimic,
        "structured_cell": models * len(cfg["structured"]["targets"]),
        "similarity_tables": 1, "pruning_tables": 1, "mimic_tables": 1, "structured_tables": 1,
        "baseline_tables": 1, "overview": 1, "all": 1,
    }  # fmt: skip
    sl = cfg["speechllm"]
    sllms, tasks = len(sl["models"]), len(sl["tasks"])
    expected |= {
        "speechllm_speech": 3, "speechllm_features": 3 * sllms,
        "speechllm_similarity": sllms * tasks * len(sl["similarity"]["inputs"]),
        "speechllm_pruning": sllms * tasks * len(sl["pruning"]["strategies"]),
        "speechllm_tables": 1,
    }  # fmt: skip
    counts = {rule: n for rule, n in default_plan.items() if rule != "model_groups"}
    assert counts == expected
    # per-model groups only where a depth-2 mimicker reads them
    assert default_plan.get("model_groups", 0) == models * any(
        2 in t["depths"] for t in mim["types"].values()
    )


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = default_config()
    cfg["similarity"]["metrics"]["cosinus"] = {}
    d = project_copy(tmp_path, cfg)
    proc = run_smk(d, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "config.similarity.metrics" in text and "cosinus" in text
    assert "cka_linear" in text  # the allowed names are listed
    assert not (d / "results").exists()


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A copy of the workflow with the tiny config, run once to completion."""
    d = project_copy(tmp_path_factory.mktemp("wf"), TINY)
    run_smk(d)
    return d


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
    from workflow_scripts.report.overview import overview_table
    from workflow_scripts.report.pareto import pareto_table

    d = tiny_project / "results/tables"
    overview = pd.read_parquet(d / "overview.parquet")
    assert list(dict.fromkeys(overview.model)) == ["tiny-a", "tiny-b"]
    findings = {f.split(" (")[0] for f in overview.finding}
    assert findings >= {"fine-tuned model", "groups of similar layers", "layers removable",
                        "best mimicker", "structured pruning", "smallest model keeping the "
                        "threshold"}  # fmt: skip
    threshold = TINY.get("pruning", {}).get("threshold", 0.95)
    stages = {k: pd.read_parquet(d / f"{k}.parquet") for k in ("pruning", "mimic", "structured")}
    pareto = pareto_table(**stages, threshold=threshold)
    pd.testing.assert_frame_equal(pareto, pd.read_csv(d / "pareto.csv"), check_dtype=False)
    again = overview_table(pd.read_parquet(d / "baseline.parquet"), pd.read_csv(d / "blocks.csv"),
                           pareto=pareto, threshold=threshold, **stages)  # fmt: skip
    pd.testing.assert_frame_equal(overview, again)
    md = (d / "overview.md").read_text()
    assert all(m in md for m in ("## tiny-a", "## tiny-b", "layers removable"))
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


def pinned_version(package: str) -> str:
    """The version pyproject.toml pins for ``package``."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.split("==")[0] == package)


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
    assert json.loads(prov["packages"])["torch"] == pinned_version("torch")
    assert prov["content_hash"] == content_hash(pd.read_parquet(path))
    assert prov["start_time"] <= prov["end_time"]


@pytest.mark.slow
def test_plan_predicts_cache_sizes_and_covers_measured_memory(tiny_project):
    """The estimates behind the rules' disk_mb / mem_mb (and `make plan`) against the tiny
    grid's real files and jobs: cache sizes within 5%; every job's requested memory above
    the peak its benchmark measured."""
    from workflow_scripts import grid
    from workflow_scripts.backbones import plan as backbones_plan
    from workflow_scripts.resource_plan import dry_run, parse_jobs

    d = tiny_project
    cfg = grid.validate(yaml.safe_load((d / "config.yaml").read_text()))
    caches = sorted((d / "results/cache").rglob("*.safetensors"))
    assert len(caches) == 6
    for path in caches:
        model, split = path.parent.name, path.stem
        predicted = backbones_plan.cache_bytes(cfg, model, split, results=str(d / "results"))
        assert abs(predicted - path.stat().st_size) / path.stat().st_size < 0.05, path
    # the smallest request of each rule against every benchmark of that rule's jobs
    requested: dict[str, int] = {}
    for job in parse_jobs(dry_run("profiles/local", [], cwd=d)):
        mem = int(job["resources"]["mem_mb"])
        requested[job["rule"]] = min(mem, requested.get(job["rule"], mem))
    # benchmark folders are named by the job's main output (core.paths), rules by the stage
    rule_of = {"corpus": "synthesize_corpus", "finetuned": "finetune", "cache": "hidden_cache",
               "pretrain_work": "pretrain_backbone"}  # fmt: skip
    checked = 0
    for tsv in (d / "results/benchmarks").rglob("*.tsv"):
        rel = tsv.relative_to(d / "results/benchmarks")
        key = rel.parts[0] if len(rel.parts) > 1 else tsv.stem
        rule = rule_of.get(key, key)
        peak = pd.read_csv(tsv, sep="\t").max_rss.max()
        assert peak < requested[rule], (tsv, peak, requested[rule])
        checked += 1
    assert checked >= 20
