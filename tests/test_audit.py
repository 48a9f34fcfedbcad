"""The audit's parts on small synthetic results written with write_parquet: Snakemake's summary
parsed, hand edits of values or metadata found, changed inputs found, the code check against a
throw-away git repository, statuses, lineage and the exit status."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts import audit
from workflow_scripts.core.provenance import collect, read_provenance, write_parquet

NO_GIT = {"git_commit": "unknown", "git_dirty": "unknown"}


def summary_text(rows):
    """A --detailed-summary stdout: a log line, the header, one line per (out, rule, ins, status,
    plan)."""
    head = "output_file\tdate\trule\tlog-file(s)\tinput-file(s)\tshellcmd\tstatus\tplan"
    lines = ["Building DAG of jobs...", head]
    for out, rule, ins, status, plan in rows:
        lines.append("\t".join([out, "-", rule, "-", ",".join(ins) or "-", "-", status, plan]))
    return "\n".join(lines) + "\n"


def make_result(root, rel, inputs=None, cell=None, rows=3, git=None):
    """A parquet result at ``root/rel`` with provenance (inputs relative to ``root``)."""
    path = root / rel
    df = pd.DataFrame({"x": range(rows), "v": [0.5 * i for i in range(rows)],
                       "l": [[i, i + 1] for i in range(rows)]})  # fmt: skip
    inputs = inputs or {}
    meta = collect(cell or {"name": rel}, inputs={k: root / v for k, v in inputs.items()},
                   git=git or NO_GIT)  # fmt: skip
    meta["input_paths"] = json.dumps(inputs)  # recorded relative to the project
    write_parquet(df, path, meta)
    return path


@pytest.fixture
def project(tmp_path):
    """source.txt -> results/a.parquet -> results/b.parquet."""
    (tmp_path / "source.txt").write_text("corpus")
    make_result(tmp_path, "results/a.parquet", {"src": "source.txt"})
    make_result(tmp_path, "results/b.parquet", {"cell0": "results/a.parquet"})
    jobs = audit.parse_summary(summary_text([
        ("results/a.parquet", "make_a", ["source.txt"], "ok", "no update"),
        ("results/b.parquet", "make_b", ["results/a.parquet"], "ok", "no update"),
    ]))  # fmt: skip
    return tmp_path, jobs


def statuses(findings):
    return {f.path: f.status for f in findings}


def test_parse_summary_skips_logging_and_splits_inputs():
    jobs = audit.parse_summary(summary_text([
        ("results/x.parquet", "r", ["a", "./b/c"], "params changed", "update pending"),
        ("results/y.csv", "s", [], "ok", "no update"),
    ]))  # fmt: skip
    assert set(jobs) == {"results/x.parquet", "results/y.csv"}
    assert jobs["results/x.parquet"].inputs == ["a", "b/c"] and jobs["results/x.parquet"].pending
    assert jobs["results/y.csv"].inputs == [] and not jobs["results/y.csv"].pending


def test_everything_current(project):
    root, jobs = project
    found = audit.audit(["results"], jobs, root, check_code=False)
    assert statuses(found) == {"results/a.parquet": "current", "results/b.parquet": "current"}


def test_hand_edited_value_is_tampered_and_downstream_stale(project):
    root, jobs = project
    path = root / "results/a.parquet"
    table = pq.read_table(path)  # keeps the schema metadata, hence the recorded hash
    table = table.set_column(1, "v", pa.array([0.0, 0.5, 9.0]))
    pq.write_table(table, path)
    assert read_provenance(path)  # metadata still there
    found = {f.path: f for f in audit.audit(["results"], jobs, root, check_code=False)}
    assert found["results/a.parquet"].status == "TAMPERED"
    assert "content hash" in found["results/a.parquet"].reasons[0]
    assert found["results/b.parquet"].status == "STALE"
    assert "input cell0 (results/a.parquet) changed" in found["results/b.parquet"].reasons[0]


def test_rewritten_unchanged_values_are_current(project):
    root, jobs = project
    path = root / "results/a.parquet"
    df = pd.read_parquet(path)  # list column comes back as numpy arrays: same hash
    assert audit.check_content(str(path), read_provenance(path)) is None
    write_parquet(df, root / "results/c.parquet", read_provenance(path))
    assert audit.check_content(str(root / "results/c.parquet"), read_provenance(path)) is None


def test_edited_metadata_is_tampered(project):
    root, jobs = project
    path = root / "results/a.parquet"
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    prov = json.loads(meta[b"provenance"])
    prov["config_slice"] = json.dumps({"name": "something else"})
    meta[b"provenance"] = json.dumps(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    found = {f.path: f for f in audit.audit(["results/a.parquet"], jobs, root, check_code=False)}
    assert found["results/a.parquet"].status == "TAMPERED"
    assert "slice_hash" in found["results/a.parquet"].reasons[0]


def test_changed_or_missing_source_input(project):
    root, jobs = project
    (root / "source.txt").write_text("another corpus")
    found = {f.path: f for f in audit.audit(["results"], jobs, root, check_code=False)}
    assert found["results/a.parquet"].status == "STALE"
    assert found["results/a.parquet"].reasons == ["input src (source.txt) changed since"]
    assert found["results/b.parquet"].status == "current"
    (root / "source.txt").unlink()
    found = {f.path: f for f in audit.audit(["results"], jobs, root, check_code=False)}
    assert found["results/a.parquet"].reasons == ["input src (source.txt) is gone"]


def test_digest_without_path_is_a_note():
    prov = {"inputs_sha256": json.dumps({"data": "ab" * 32}), "input_paths": "{}"}
    reasons, notes = audit.check_inputs(prov, audit.ShaCache(), None)
    assert reasons == [] and notes == [f"input data: digest {'ab' * 6} (no path recorded)"]


def test_snakemake_plan_orphans_and_missing_outputs(project):
    root, _ = project
    make_result(root, "results/old.parquet")
    jobs = audit.parse_summary(summary_text([
        ("results/a.parquet", "make_a", ["source.txt"], "params changed", "update pending"),
        ("results/b.parquet", "make_b", ["results/a.parquet"], "ok", "update pending"),
        ("results/new.parquet", "make_new", [], "missing", "update pending"),
        ("results/chart.html", "make_b", ["results/a.parquet"], "ok", "no update"),
    ]))  # fmt: skip
    found = {f.path: f for f in audit.audit(["results"], jobs, root, check_code=False)}
    assert {p: f.status for p, f in found.items()} == {
        "results/a.parquet": "STALE", "results/b.parquet": "STALE",
        "results/old.parquet": "ORPHAN", "results/new.parquet": "MISSING",
    }  # fmt: skip
    assert found["results/a.parquet"].reasons == ["snakemake: params changed, update pending"]
    text = audit.format_findings(list(found.values()))
    assert "1 missing, 1 orphan, 2 stale" in text


def test_parquet_inside_a_directory_output_is_part_of_it_not_an_orphan(project):
    root, jobs = project
    (root / "results/speech/training").mkdir(parents=True)
    pd.DataFrame({"path": ["0.wav"], "text": ["go"]}).to_parquet(
        root / "results/speech/training/manifest.parquet"
    )
    make_result(root, "results/speech_old/manifest.parquet")  # no job makes its folder
    jobs = dict(jobs)
    jobs.update(audit.parse_summary(summary_text([
        ("results/speech/training", "speech", [], "ok", "no update")])))  # fmt: skip
    found = statuses(audit.audit(["results"], jobs, root, check_code=False))
    assert found == {"results/a.parquet": "current", "results/b.parquet": "current",
                     "results/speech_old/manifest.parquet": "ORPHAN"}  # fmt: skip
    assert audit.inside_directory_output("results/speech/training/x/m.parquet", jobs) == (
        "results/speech/training"
    )
    assert audit.inside_directory_output("results/a.parquet", jobs) is None


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)  # fmt: skip


@pytest.fixture
def repo(tmp_path):
    """A project in git: one rule whose script imports lib, which imports .helper."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules/stage.smk").write_text(
        'rule make_a:\n    output:\n        "results/a.parquet",\n    script:\n'
        '        "../workflow_scripts/scripts/make_a.py"\n\n\nrule other:\n    shell:\n'
        '        "true"\n'
    )
    pkg = tmp_path / "workflow_scripts"
    (pkg / "scripts").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "scripts/__init__.py").write_text("")
    (pkg / "scripts/make_a.py").write_text("from workflow_scripts.lib import f\nimport json\n")
    (pkg / "lib.py").write_text("def f():\n    from .helper import g\n    return g()\n")
    (pkg / "helper.py").write_text("def g():\n    return 1\n")
    (pkg / "unrelated.py").write_text("X = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "init")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    return tmp_path, commit


def test_rule_sources_and_import_closure(repo):
    root, _ = repo
    rules = audit.rule_sources(root)
    assert rules["make_a"] == ("rules/stage.smk", "workflow_scripts/scripts/make_a.py")
    assert rules["other"] == ("rules/stage.smk", None)
    assert audit.import_closure(root, rules["make_a"][1]) == {
        "workflow_scripts/scripts/make_a.py", "workflow_scripts/__init__.py",
        "workflow_scripts/lib.py", "workflow_scripts/helper.py",
    }  # fmt: skip


def test_code_check_against_the_recorded_commit(repo):
    root, commit = repo
    jobs = audit.parse_summary(summary_text([("results/a.parquet", "make_a", [], "ok",
                                              "no update")]))  # fmt: skip
    make_result(root, "results/a.parquet", git={"git_commit": commit, "git_dirty": "false"})

    def check():
        (f,) = audit.audit(["results"], jobs, root)
        return f

    f = check()
    assert f.status == "current" and f"code: {commit[:8]}" in f.notes
    (root / "workflow_scripts/unrelated.py").write_text("X = 2\n")  # not imported: still current
    assert check().status == "current"
    (root / "workflow_scripts/helper.py").write_text("def g():\n    return 2\n")
    f = check()
    assert f.status == "STALE"
    assert f.reasons == [f"code changed since {commit[:8]}: workflow_scripts/helper.py"]
    # made from a dirty tree: cannot be proven either way, reported only
    make_result(root, "results/a.parquet", git={"git_commit": commit, "git_dirty": "true"})
    f = check()
    assert f.status == "current" and any("uncommitted" in n for n in f.notes)
    # a commit this repository does not have
    make_result(root, "results/a.parquet", git={"git_commit": "f" * 40, "git_dirty": "false"})
    f = check()
    assert f.status == "current" and any("not in this repository" in n for n in f.notes)


def test_lineage_walks_back_to_the_sources(project):
    root, _ = project
    make_result(root, "results/c.parquet", {"a": "results/a.parquet", "b": "results/b.parquet"})
    jobs = audit.parse_summary(summary_text([
        ("results/a.parquet", "make_a", ["source.txt"], "ok", "no update"),
        ("results/b.parquet", "make_b", ["results/a.parquet"], "ok", "no update"),
        ("results/c.parquet", "make_c", ["results/a.parquet", "results/b.parquet"], "ok",
         "no update"),
    ]))  # fmt: skip
    lines = audit.lineage("results/c.parquet", jobs, root)
    assert lines[0].startswith("results/c.parquet  [rule make_c, ok, no update, slice ")
    assert lines[1].startswith("├─ results/a.parquet  [rule make_a")
    assert lines[2].startswith("│  └─ source.txt  [source, sha256 ")
    assert lines[3].startswith("└─ results/b.parquet  [rule make_b")
    assert lines[4] == "   └─ results/a.parquet  (inputs above)"
    assert len(lines) == 5


def test_main_exit_status(project, monkeypatch, capsys):
    root, _ = project
    rows = [("results/a.parquet", "make_a", ["source.txt"], "ok", "no update"),
            ("results/b.parquet", "make_b", ["results/a.parquet"], "ok", "no update")]  # fmt: skip
    monkeypatch.setattr(audit, "snakemake_summary", lambda *a, **k: summary_text(rows))
    assert audit.main(["-C", str(root), "--no-code"]) == 0
    assert "2 current" in capsys.readouterr().out
    assert audit.main(["-C", str(root), "--no-code", "results/b.parquet"]) == 0
    out = capsys.readouterr().out
    assert "lineage of results/b.parquet" in out and "source.txt" in out
    rows[0] = ("results/a.parquet", "make_a", ["source.txt"], "params changed", "update pending")
    assert audit.main(["-C", str(root), "--no-code"]) == 1

    def fail(*a, **k):
        raise RuntimeError("no Snakefile")

    monkeypatch.setattr(audit, "snakemake_summary", fail)
    assert audit.main(["-C", str(root)]) == 2


def test_results_hashed_the_old_way_are_still_checked(tmp_path):
    df = pd.DataFrame({"x": [1, 2], "s": ["a", "b"]})
    path = tmp_path / "old.parquet"
    write_parquet(df, path, {})
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    prov = json.loads(meta[b"provenance"])
    prov["content_hash"] = audit.legacy_content_hash(df)  # as written before the Arrow hash
    meta[b"provenance"] = json.dumps(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    assert audit.check_content(str(path), read_provenance(path)) is None
    pq.write_table(table.set_column(0, "x", pa.array([1, 3])).replace_schema_metadata(meta), path)
    assert audit.check_content(str(path), read_provenance(path)).startswith("content hash")
