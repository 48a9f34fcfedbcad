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
        "speechllm_heal": sllms * bool(sl["pruning"]["heal"]["n"]),  # the n = 0 control
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


# The tiny grid with one backbone a local folder (a source: its weights are ancient() inputs
# with their digests in the params) and one pretrained by the workflow (a rule's output).
TINY_WF = {**TINY, "models": {"tiny-a": TINY["models"]["tiny-a"], "tiny-b": {"hf": "local/tiny-b"}}}


def local_backbone(d) -> None:
    """A randomly initialised tiny WavLM saved as a local model folder ``d/local/tiny-b``."""
    import torch
    from helpers import TINY_MODEL

    from workflow_scripts.backbones.pretrain import _save_partial, build_pretraining_model, finalize

    spec = {**TINY_MODEL, "arch": "wavlm"}
    torch.manual_seed(0)
    _, base = build_pretraining_model("wavlm", spec)
    finalize(_save_partial(base, d / "local/tiny-b", spec), d / "local/tiny-b", {})


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A copy of the workflow with the tiny config, run once to completion."""
    d = project_copy(tmp_path_factory.mktemp("wf"), TINY_WF)
    local_backbone(d)
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
    cfg = yaml.safe_load(yaml.safe_dump(TINY_WF))
    cfg["cache"]["clips"] = 16
    write_config(d, cfg)
    jobs = planned_jobs(d)
    assert set(jobs) == {"hidden_cache", "similarity_cell", "mimic_cell", "similarity_tables",
                         "mimic_tables", "structured_tables", "overview"}, jobs  # fmt: skip
    assert sorted(jobs["hidden_cache"]) == ["model=tiny-a, split=validation",
                                            "model=tiny-b, split=validation"]  # fmt: skip
    assert len(jobs["similarity_cell"]) == 4 and len(jobs["mimic_cell"]) == 2
    write_config(d, TINY_WF)
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
    threshold = TINY_WF.get("pruning", {}).get("threshold", 0.95)
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


@pytest.mark.slow
def test_predictions_beside_every_cell_recompute_its_accuracies(tiny_project):
    """Issue #26: every evaluated model state leaves its per-clip predictions beside its cell
    (baseline, each pruning step, each mimicker, each structured target); they give the
    cell's accuracies exactly and its retained intervals (paired with the unpruned model's
    predictions); the summaries and the overview give both verdicts."""
    from workflow_scripts.core import paths
    from workflow_scripts.core.retained import correct_of, retained_interval

    res = tiny_project / "results"

    def read(name, **w):
        return pd.read_parquet(tiny_project / paths.path(name, **w))

    for m in ("tiny-a", "tiny-b"):
        cell = read("baseline_cell", model=m)
        test = cell[cell.split == "testing"].iloc[0]
        bp = read("baseline_predictions", model=m)
        base_ok = (bp.predicted == bp.label).to_numpy()
        assert list(bp["clip"]) == list(range(int(test.n))) and base_ok.mean() == test.accuracy
        for strategy in TINY_WF["pruning"]["strategies"]:
            cell = read("pruning_cell", model=m, strategy=strategy)
            pred = read("pruning_predictions", model=m, strategy=strategy)
            ok0 = correct_of(pred, n_removed=0, healed=False)
            assert len(pred) == len(cell) * len(ok0) and (ok0 == base_ok).all()
            for r in cell.itertuples(index=False):
                ok = correct_of(pred, n_removed=r.n_removed, healed=False)
                assert ok.mean() == r.accuracy
                assert retained_interval(ok, ok0)[1:] == (r.retained_lo, r.retained_hi)
        for kind, spec in TINY_WF["mimic"]["types"].items():
            for depth in spec["depths"]:
                cell = read("mimic_cell", model=m, kind=kind, depth=depth).iloc[0]
                pred = read("mimic_predictions", model=m, kind=kind, depth=depth)
                ok = (pred.predicted == pred.label).to_numpy()
                assert ok.mean() == cell.accuracy and len(ok) == cell.eval_clips
                assert retained_interval(ok, base_ok)[1:] == (cell.retained_lo, cell.retained_hi)
        for target in TINY_WF["structured"]["targets"]:
            cell = read("structured_cell", model=m, sparsity=target).iloc[0]
            pred = read("structured_predictions", model=m, sparsity=target)
            ok = {k: correct_of(pred, state=k) for k in ("unpruned", "pruned")}
            assert ok["unpruned"].mean() == cell.base_accuracy
            assert ok["pruned"].mean() == cell.accuracy
            ci = retained_interval(ok["pruned"], ok["unpruned"])[1:]
            assert ci == (cell.retained_lo, cell.retained_hi)
    table = pd.read_parquet(res / "tables/pruning.parquet")
    assert {"retained_lo", "retained_hi", "meets_threshold", "meets_with_confidence"} <= set(table)
    overview = pd.read_parquet(res / "tables/overview.parquet")
    assert {"retained_ci_pct", "meets_threshold", "meets_with_confidence"} <= set(overview)
    assert overview.finding.str.startswith("layers removable with confidence").any()


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
    # 11 per model: baseline, 2 similarity, pruning, mimic (+ curves), structured, and the
    # per-clip predictions beside baseline, pruning, mimic and structured
    assert len(cells) == 22 and set(rows.values()) == {"current"}, proc.stdout

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
        # the cell is tampered; every output of the similarity tables made from it (table,
        # blocks, charts: each audited through its metadata or sidecar) no longer matches
        made_from_it = ["tables/similarity.parquet", "tables/blocks.csv", "charts/similarity.html",
                        "charts/similarity.png", "charts/similarity_tiny-a.html",
                        "charts/similarity_tiny-b.html"]  # fmt: skip
        assert bad == {"results/cells/similarity/tiny-a/cosine.parquet": "TAMPERED",
                       **{f"results/{p}": "STALE" for p in made_from_it}}, proc.stdout  # fmt: skip
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
def test_plan_predicts_cache_sizes_and_covers_measured_memory(tiny_project, monkeypatch):
    """The estimates behind the rules' disk_mb / mem_mb (and `make plan`) against the tiny
    grid's real files and jobs: cache sizes within 5%; every job's requested memory above
    the peak its benchmark measured."""
    from workflow_scripts import grid
    from workflow_scripts.backbones import cache_plan
    from workflow_scripts.resource_plan import dry_run, parse_jobs

    d = tiny_project
    monkeypatch.chdir(d)  # as Snakemake plans it: the local model folder relative to the project
    cfg = grid.validate(yaml.safe_load((d / "config.yaml").read_text()))
    caches = sorted((d / "results/cache").rglob("*.safetensors"))
    assert len(caches) == 6
    for path in caches:
        model, split = path.parent.name, path.stem
        predicted = cache_plan.cache_bytes(cfg, model, split, results=str(d / "results"))
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


def audit_findings(d) -> dict[str, tuple[str, str, str]]:
    """result path -> (status, rule, detail) of the audit of ``d``, and the exit status."""
    proc = run_audit(d)
    rows = {}
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split(maxsplit=3)
        if len(parts) >= 3 and parts[1].startswith("results/"):
            rows[parts[1]] = (parts[0], parts[2], parts[3] if len(parts) > 3 else "")
    assert proc.returncode == (1 if any(s != "current" for s, _, _ in rows.values()) else 0)
    return rows


def flagged(d) -> dict[str, tuple[str, str, str]]:
    return {p: f for p, f in audit_findings(d).items() if f[0] != "current"}


@pytest.mark.slow
def test_every_job_recorded_only_code_its_plan_covered(tiny_project):
    """The modules each job loaded (sys.modules when its result was written) are a subset of
    what its rule's params.code planned: the plan never misses a module a job loads. Every
    output of the grid carries provenance (metadata or sidecar)."""
    from workflow_scripts.audit import result_provenance

    checked = set()
    for path in sorted((tiny_project / "results").rglob("*")):
        rel = path.relative_to(tiny_project / "results")
        if any(p.startswith(".") for p in rel.parts) or rel.parts[0] in ("logs", "benchmarks"):
            continue
        prov, _ = result_provenance(path)
        if not prov:
            continue
        assert prov["code_planned"] == "true", path
        assert json.loads(prov["code_unplanned"]) == [], (path, prov["code_unplanned"])
        assert "workflow_scripts/core/provenance.py" in json.loads(prov["code_modules"])
        checked.add(prov["rule"])
    assert checked >= {"synthesize_corpus", "manifest", "pretrain_backbone", "finetune",
                       "hidden_cache", "similarity_cell", "pruning_cell", "mimic_cell",
                       "structured_cell"} | AGGREGATIONS  # fmt: skip


class edited:
    """Edit a file in place; restore its bytes afterwards (with a new modification time, as
    an editor or `git checkout` would)."""

    def __init__(self, path, change):
        self.path, self.change = path, change

    def __enter__(self):
        self.original = self.path.read_bytes()
        self.path.write_bytes(self.change(self.original))

    def __exit__(self, *exc):
        self.path.write_bytes(self.original)


def append(text):
    return lambda b: b + text.encode()


@pytest.mark.slow
def test_each_change_reruns_and_flags_exactly_its_dependants(tiny_project):
    """Issue #25's table on the tiny grid: code (a metric module, a pruning module, a core
    module), a comment, backbone weights, the corpus config, a package version - each plans
    and flags exactly the jobs that depend on it, and undoing it makes both quiet again."""
    d = tiny_project
    aggregations = {rule: [""] for rule in AGGREGATIONS}

    def planned():
        return {rule: sorted(w) for rule, w in planned_jobs(d).items()}

    def quiet():
        assert planned() == {} and flagged(d) == {}

    def direct(bad, reason):
        """The results the audit flags for ``reason`` itself, not through Snakemake's plan."""
        return {p for p, (_, _, detail) in bad.items() if reason in detail}

    quiet()
    # a metric module: that metric's similarity cells, and what aggregates them
    with edited(d / "workflow_scripts/similarity/cka.py", append("\n_PROBE = 1\n")):
        jobs = planned()
        assert jobs == {"similarity_cell": ["model=tiny-a, metric=cka_linear",
                                            "model=tiny-b, metric=cka_linear"],
                        "similarity_tables": [""], "overview": [""]}, jobs  # fmt: skip
        bad = flagged(d)
        assert direct(bad, "code changed since: workflow_scripts/similarity/cka.py") == {
            f"results/cells/similarity/{m}/cka_linear.parquet" for m in ("tiny-a", "tiny-b")
        }
        assert {rule for _, rule, _ in bad.values()} == set(jobs)
    quiet()
    # a pruning module: the pruning cells and the tables that read them (the structured
    # tables compare against layer pruning)
    with edited(d / "workflow_scripts/pruning/sweeps.py", append("\n_PROBE = 1\n")):
        jobs = planned()
        assert jobs == {"pruning_cell": ["model=tiny-a, strategy=forward",
                                         "model=tiny-b, strategy=forward"],
                        "pruning_tables": [""], "structured_tables": [""],
                        "overview": [""]}, jobs  # fmt: skip
        bad = flagged(d)
        assert direct(bad, "workflow_scripts/pruning/sweeps.py") == {
            f"results/{kind}/pruning/{m}/forward{ext}"
            for m in ("tiny-a", "tiny-b")
            for kind, ext in (
                ("cells", ".parquet"),
                ("cells", ".predictions.parquet"),
                ("exports", ""),
            )
        }  # the cells, their per-clip predictions and the checkpoints the same jobs exported
        assert {rule for _, rule, _ in bad.values()} == set(jobs)
    quiet()
    # comments, a docstring and a reformat: nothing, in a module and in a rule script
    script = d / "workflow_scripts/scripts/similarity_cell.py"
    with edited(d / "workflow_scripts/pruning/sweeps.py", lambda b: b"# note\n" + b + b"\n\n"):
        with edited(script, append("# a comment\n")):
            quiet()
    # a core module: every job that loaded it (by its own record) and everything downstream
    core = "workflow_scripts/core/tables.py"
    loaders = set()
    for path in (d / "results").rglob("*.parquet"):
        prov = read_provenance_of(path)
        if prov and core in json.loads(prov.get("code_modules", "{}")):
            loaders.add(prov["rule"])
    assert loaders
    with edited(d / core, append("\n_PROBE = 1\n")):
        jobs = planned()
        bad = flagged(d)
        assert {rule for p, (_, rule, _) in bad.items() if p in direct(bad, core)} == loaders
        assert loaders <= set(jobs) and {rule for _, rule, _ in bad.values()} == set(jobs)
    quiet()
    # new weights of the local backbone: its fine-tuning and everything downstream of it
    weights = d / "local/tiny-b/model.safetensors"
    flip = lambda b: b[:-8] + bytes([b[-8] ^ 1]) + b[-7:]  # noqa: E731  (a byte of a tensor)
    with edited(weights, flip):
        jobs = planned()
        per_model = {"finetune", "hidden_cache", "similarity_cell", "pruning_cell",
                     "mimic_cell", "structured_cell"}  # fmt: skip
        assert set(jobs) == per_model | set(aggregations), jobs
        assert all("model=tiny-b" in w for rule in per_model for w in jobs[rule]), jobs
        bad = flagged(d)
        assert direct(bad, "local/tiny-b/model.safetensors) changed since") == {
            "results/finetuned/tiny-b",  # the fine-tuning job's outputs
            "results/cells/baseline/tiny-b.parquet",
            "results/cells/baseline/tiny-b.predictions.parquet",
        }
        assert {rule for _, rule, _ in bad.values()} == set(jobs)
    quiet()  # the same bytes again, with a new modification time: nothing to do
    # the corpus config: the corpus and everything made from it
    cfg = yaml.safe_load(yaml.safe_dump(TINY_WF))
    cfg["corpus"]["seed"] = 2
    write_config(d, cfg)
    jobs = planned()
    assert "synthesize_corpus" in jobs and set(jobs) >= per_model | set(aggregations)
    write_config(d, TINY_WF)
    quiet()
    # a tracked package's version: the audit names it; `--rerun` reruns exactly that result
    # (the overview table: rewriting a file's metadata changes its bytes, which would make the
    # results made from it stale too; nothing is made from the overview)
    table = "results/tables/overview.parquet"
    set_recorded_package(d / table, "torch", "0.0.1")
    bad = flagged(d)
    assert set(bad) == {table} and "package torch 0.0.1 -> " in bad[table][2]
    proc = run_audit(d, "--rerun")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rerunning 1 flagged outputs" in proc.stdout
    quiet()


def read_provenance_of(path):
    from workflow_scripts.core.provenance import read_provenance

    return read_provenance(path)


def set_recorded_package(path, package: str, version: str) -> None:
    """Rewrite one package version in a parquet's recorded provenance (values and modification
    time untouched: as if the result had been made under that version)."""
    import pyarrow.parquet as pq

    st = path.stat()
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    prov = json.loads(meta[b"provenance"])
    prov["packages"] = json.dumps({**json.loads(prov["packages"]), package: version})
    meta[b"provenance"] = json.dumps(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
