"""`make run` records its own cost (workflow_scripts/report/runtime.py) and the README's
findings block quotes that record, not a number typed by hand."""

import json
import os

import pandas as pd

from workflow_scripts.report import readme, runtime

HEAD = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, seconds, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEAD + f"{seconds}\t0:00:01\t1\t1\t1\t1\t0\t0\t50\t{seconds}\n")
    os.utime(path, (mtime, mtime))


def test_record_counts_the_jobs_of_this_invocation_and_their_time(tmp_path):
    b = tmp_path / "benchmarks"
    _bench(b / "finetuned" / "a.tsv", 100.0, 1_000)  # an earlier invocation's job
    _bench(b / "finetuned" / "b.tsv", 40.5, 2_000)
    _bench(b / "pruning_cell" / "b" / "forward.tsv", 10.0, 2_001)
    _bench(b / "manifest.tsv", 2.0, 2_002)
    rec = runtime.summarize(tmp_path, start=1_500, end=1_500 + 125.0)
    assert rec["jobs_ran"] == 3 and rec["jobs_total"] == 4
    assert rec["wall_seconds"] == 125.0
    assert rec["job_seconds"] == 52.5
    assert rec["job_seconds_per_rule"] == {"finetuned": 40.5, "manifest": 2.0, "pruning_cell": 10.0}
    text = runtime.sentence(rec)
    assert "**2 min 05 s**" in text and "3 of 4 jobs" in text and "finetuned 40 s" in text


def test_a_run_without_jobs_keeps_the_earlier_record(tmp_path):
    _bench(tmp_path / "benchmarks" / "manifest.tsv", 3.0, 1_000)
    path = runtime.write(tmp_path, start=900, end=960)
    first = json.loads(path.read_text())
    assert first["jobs_ran"] == 1 and "every job" in runtime.sentence(first)
    assert runtime.write(tmp_path, start=5_000, end=5_004) is None  # a no-op make run
    assert runtime.read(tmp_path) == first


def test_readme_block_quotes_the_record_of_its_run():
    overview = pd.DataFrame(columns=["model", "finding", "method", "result"])
    rec = {
        "git_commit": "abcdef0123",
        "wall_seconds": 1111.0,
        "jobs_ran": 9,
        "jobs_total": 9,
        "job_seconds": 2000.0,
        "job_seconds_per_rule": {"finetuned": 700.0},
        "cpus": 2,
    }
    block = readme.findings_block(overview, "abcdef0", run_record=rec)
    assert "**18 min 31 s**" in block and "`abcdef0`" in block and "2 CPU cores" in block
    assert "min" not in readme.findings_block(overview, "abcdef0").split("\n")[0]
