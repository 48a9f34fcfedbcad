"""What a ``make run`` cost, recorded by the run itself so that the README quotes it instead of
a number typed by hand: ``python -m workflow_scripts.report.runtime ROOT START`` (the Makefile's
``run`` target, after Snakemake returns) writes ``ROOT/logs/make_run.json``.

The record holds the wall time from ``START`` (epoch seconds, taken before Snakemake started)
to now, the commit, the CPU count, and from the rules' benchmark files (``ROOT/benchmarks``) the
jobs that ran in this invocation (a benchmark file written at or after ``START``), all jobs with
a benchmark file, and the job seconds per rule of those that ran. An invocation that ran no job
(a no-op ``make run``) leaves an earlier record as it is, so the README keeps the cost of the run
that made the results. Torch-free.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

#: The record's path under the results root.
RECORD = Path("logs") / "make_run.json"


def _job_seconds(tsv: Path) -> float:
    """The ``s`` column (wall seconds of the job) of a Snakemake benchmark file's last row."""
    lines = [ln for ln in tsv.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return 0.0
    head, last = lines[0].split("\t"), lines[-1].split("\t")
    return float(last[head.index("s")])


def _rule_of(tsv: Path, bench: Path) -> str:
    """The rule of a benchmark file: its first path part under ``benchmarks/`` (file stem for a
    rule without wildcards)."""
    parts = tsv.relative_to(bench).parts
    return parts[0] if len(parts) > 1 else tsv.stem


def summarize(root: str | os.PathLike, start: float, end: float | None = None) -> dict:
    """The record of an invocation that started at ``start`` (epoch seconds) over the
    benchmark files of the results ``root``."""
    from workflow_scripts.core.provenance import git_info

    end = time.time() if end is None else end
    bench = Path(root) / "benchmarks"
    files = sorted(bench.rglob("*.tsv")) if bench.is_dir() else []
    ran = [f for f in files if f.stat().st_mtime >= start]
    per_rule: dict[str, float] = {}
    for f in ran:
        rule = _rule_of(f, bench)
        per_rule[rule] = per_rule.get(rule, 0.0) + _job_seconds(f)
    return {
        **git_info(),
        "wall_seconds": round(end - start, 1),
        "jobs_ran": len(ran),
        "jobs_total": len(files),
        "job_seconds": round(sum(per_rule.values()), 1),
        "job_seconds_per_rule": {k: round(v, 1) for k, v in sorted(per_rule.items())},
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
    }


def write(root: str | os.PathLike, start: float, end: float | None = None) -> Path | None:
    """Write the record of the invocation (atomically); None (and nothing written) when it
    ran no job."""
    from workflow_scripts.core.provenance import write_text_atomic

    rec = summarize(root, start, end)
    if rec["jobs_ran"] == 0:
        return None
    path = Path(root) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return path


def read(root: str | os.PathLike) -> dict | None:
    """The record under ``root``, or None."""
    path = Path(root) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def sentence(rec: dict) -> str:
    """The README's line for a record: wall time, jobs, job time and its largest rule."""
    wall = float(rec["wall_seconds"])
    rules = rec.get("job_seconds_per_rule") or {}
    top = max(rules, key=rules.get) if rules else None
    ran, total = rec["jobs_ran"], rec["jobs_total"]
    scope = ("every job, from an empty results folder" if ran == total
             else f"{ran} of {total} jobs (the rest were current)")  # fmt: skip
    text = (f"`make run` at commit `{str(rec.get('git_commit', 'unknown'))[:7]}` on "
            f"{rec.get('cpus')} CPU cores: **{int(wall // 60)} min {int(round(wall % 60)):02d} s** "
            f"wall for {scope}; {float(rec['job_seconds']):,.0f} s of job time")  # fmt: skip
    if top:
        text += f" ({top} {rules[top]:,.0f} s of it)"
    return text + f" (`{RECORD.as_posix()}`)."


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m workflow_scripts.report.runtime RESULTS_ROOT START_EPOCH",
              file=sys.stderr)  # fmt: skip
        return 2
    path = write(argv[0], float(argv[1]))
    print(f"run record: {path}" if path else "run record: no job ran, record unchanged",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
