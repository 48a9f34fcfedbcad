"""The audit's parts on small synthetic results written with write_parquet: Snakemake's summary
parsed, hand edits of values or metadata found, changed inputs found, the code check against a
throw-away git repository, statuses, lineage and the exit status."""

from __future__ import annotations

import json

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
                     "results/speech_old/manifest.parquet": "ORPHAN",
                     "results/speech/training": "UNVERIFIED"}  # no sidecar  # fmt: skip
    assert audit.inside_directory_output("results/speech/training/x/m.parquet", jobs) == (
        "results/speech/training"
    )
    assert audit.inside_directory_output("results/a.parquet", jobs) is None


def with_code(root, path, modules, unplanned=(), planned="true", packages=None):
    """Rewrite the code record (and optionally the packages) of a parquet result."""
    from workflow_scripts.core.code import code_digest

    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    prov = json.loads(meta[b"provenance"])
    prov["code_modules"] = json.dumps({m: code_digest(root / m) for m in modules})
    prov["code_unplanned"] = json.dumps(list(unplanned))
    prov["code_planned"] = planned
    if packages is not None:
        prov["packages"] = json.dumps(packages)
    meta[b"provenance"] = json.dumps(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_code_is_checked_against_the_recorded_module_digests(project):
    from workflow_scripts.core.provenance import package_versions

    root, jobs = project
    lib = root / "workflow_scripts/lib.py"
    lib.parent.mkdir()
    lib.write_text("def f():\n    return 1\n")
    path = root / "results/a.parquet"
    with_code(root, path, ["workflow_scripts/lib.py"])

    def finding():
        return {f.path: f for f in audit.audit(["results/a.parquet"], jobs, root)}[
            "results/a.parquet"
        ]

    assert finding().status == "current"
    lib.write_text('"""Doc."""\n\n\ndef f():  # same code\n    return 1\n')
    assert finding().status == "current"
    lib.write_text("def f():\n    return 2\n")
    f = finding()
    assert f.status == "STALE" and f.reasons == ["code changed since: workflow_scripts/lib.py"]
    lib.unlink()
    assert finding().status == "STALE"
    # a job that loaded a module its plan did not cover, or no digests at all: unverified
    lib.write_text("def f():\n    return 1\n")
    with_code(root, path, ["workflow_scripts/lib.py"], unplanned=["workflow_scripts/lib.py"])
    f = finding()
    assert f.status == "UNVERIFIED" and "did not cover" in f.reasons[0]
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    prov = json.loads(meta[b"provenance"])
    del prov["code_modules"]
    meta[b"provenance"] = json.dumps(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    f = finding()
    assert f.status == "UNVERIFIED" and "no module digests" in f.reasons[0]
    # another version of a tracked package: stale, the package named
    packages = {**package_versions(), "torch": "0.0.1"}
    with_code(root, path, ["workflow_scripts/lib.py"], packages=packages)
    f = finding()
    assert f.status == "STALE" and f.reasons == [
        f"package torch 0.0.1 -> {package_versions()['torch']}"
    ]


def test_outputs_without_metadata_are_audited_through_their_sidecar(project):
    from workflow_scripts.core.provenance import write_sidecar

    root, jobs = project
    out = root / "results/tables/t.csv"
    out.parent.mkdir()
    out.write_text("a,b\n1,2\n")
    folder = root / "results/model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"123")
    jobs = dict(jobs)
    jobs.update(audit.parse_summary(summary_text([
        ("results/tables/t.csv", "tables", ["results/a.parquet"], "ok", "no update"),
        ("results/model", "train", [], "ok", "no update"),
    ])))  # fmt: skip
    import os

    cwd = os.getcwd()
    os.chdir(root)  # jobs run in the project: inputs and outputs relative to it
    try:
        meta = collect({"t": 1}, inputs={"a": "results/a.parquet"}, git=NO_GIT)
        write_sidecar("results/tables/t.csv", meta)
        write_sidecar("results/model", meta)
    finally:
        os.chdir(cwd)
    (folder / ".snakemake_timestamp").write_text("")  # Snakemake's, after the job: not content
    found = statuses(audit.audit(["results"], jobs, root, check_code=False))
    assert found["results/tables/t.csv"] == "current" and found["results/model"] == "current"
    out.write_text("a,b\n1,3\n")
    (folder / "w.bin").write_bytes(b"124")
    found = {f.path: f for f in audit.audit(["results"], jobs, root, check_code=False)}
    assert found["results/tables/t.csv"].status == "TAMPERED"
    assert found["results/model"].status == "TAMPERED"
    (root / "results/tables/.provenance/t.csv.json").unlink()
    f = {f.path: f for f in audit.audit(["results"], jobs, root, check_code=False)}[
        "results/tables/t.csv"
    ]
    assert f.status == "UNVERIFIED" and "no provenance" in f.reasons[0]


def test_rerun_targets_are_the_flagged_outputs_a_job_makes():
    jobs = audit.parse_summary(summary_text([("results/a.parquet", "r", [], "ok", "no update")]))
    found = [audit.Finding("results/a.parquet", "STALE"), audit.Finding("results/o.parquet",
             "ORPHAN"), audit.Finding("results/b.parquet", "UNVERIFIED")]  # fmt: skip
    assert audit.rerun_targets(found, jobs) == ["results/a.parquet"]


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
