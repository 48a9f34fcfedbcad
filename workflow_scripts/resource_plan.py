"""What a run will ask for, before it runs: ``python -m workflow_scripts.resource_plan``
(``make plan``; add ``--configfile config/paper.yaml``).

Plans the whole grid with a Snakemake dry run (``--forceall``; no data or checkpoints needed)
under a profile (default: ``slurm``, so GPU rules show their GPU) and prints, per rule and in
total: jobs, GPU or CPU, the largest ``mem_mb`` and ``runtime`` requested, the summed
requested runtime, and the disk its outputs take (``disk_mb``, from the same estimates as
the rules' requests: ``workflow_scripts.core.sizes``, ``backbones.plan.cache_bytes``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RulePlan:
    rule: str
    jobs: int = 0
    gpu: bool = False
    mem_mb: int = 0
    runtime_min: int = 0
    runtime_total_min: int = 0
    disk_mb: int = 0
    wildcards: list[str] = field(default_factory=list)


def parse_jobs(dry_run: str) -> list[dict]:
    """(rule, wildcards, resources) of every job in a dry run's output."""
    jobs = []
    for block in re.split(r"\n(?=\[|rule |localrule )", dry_run):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        wc = re.search(r"wildcards: (.*)", block)
        res = re.search(r"resources: (.*)", block)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs.append({"rule": m.group(1), "wildcards": wc.group(1) if wc else "",
                     "resources": resources})  # fmt: skip
    return jobs


def summarize(jobs: list[dict]) -> list[RulePlan]:
    rules: dict[str, RulePlan] = {}
    for job in jobs:
        r = rules.setdefault(job["rule"], RulePlan(job["rule"]))
        res = job["resources"]
        r.jobs += 1
        r.gpu = r.gpu or int(res.get("gpu", 0) or 0) > 0 or "gres" in res
        r.mem_mb = max(r.mem_mb, int(res.get("mem_mb", 0) or 0))
        runtime = int(res.get("runtime", 0) or 0)
        r.runtime_min = max(r.runtime_min, runtime)
        r.runtime_total_min += runtime
        r.disk_mb += int(res.get("disk_mb", 0) or 0)
        r.wildcards.append(job["wildcards"])
    return list(rules.values())


def _gb(mb: float) -> str:
    return f"{mb / 1000:,.1f} GB" if mb >= 1000 else f"{mb:,.0f} MB"


def format_table(plan: list[RulePlan]) -> str:
    head = ("| rule | jobs | device | mem_mb (max) | runtime (max) | runtime (sum) | disk |\n"
            "| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    rows = [
        f"| {r.rule} | {r.jobs} | {'GPU' if r.gpu else 'CPU'} | {r.mem_mb:,} | "
        f"{r.runtime_min} min | {r.runtime_total_min / 60:,.1f} h | {_gb(r.disk_mb)} |"
        for r in plan
    ]
    gpu_h = sum(r.runtime_total_min for r in plan if r.gpu) / 60
    cpu_h = sum(r.runtime_total_min for r in plan if not r.gpu) / 60
    peak = max(plan, key=lambda r: r.mem_mb) if plan else None
    total = [
        f"\n**Total:** {sum(r.jobs for r in plan)} jobs "
        f"({sum(r.jobs for r in plan if r.gpu)} GPU); disk {_gb(sum(r.disk_mb for r in plan))}; "
        f"peak job memory {peak.mem_mb:,} MB ({peak.rule}); "
        if peak
        else "\n**Total:** 0 jobs",
        f"requested time {gpu_h:,.1f} GPU-job hours + {cpu_h:,.1f} CPU-job hours "
        "(requests, i.e. upper bounds, not measurements).",
    ]
    return "\n".join([head, *rows, "".join(total)])


def dry_run(profile: str, extra: list[str], cwd: Path = ROOT) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    snakemake = str(Path(sys.executable).parent / "snakemake")
    cmd = [snakemake, "-n", "--forceall", "--profile", profile, *extra]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="slurm", help="Snakemake profile (default: slurm)")
    ap.add_argument("--configfile", action="append", default=[], help="as for snakemake")
    ap.add_argument("-C", "--directory", type=Path, default=ROOT, help="project folder")
    args = ap.parse_args(argv)
    extra = [x for f in args.configfile for x in ("--configfile", f)]
    plan = summarize(parse_jobs(dry_run(args.profile, extra, args.directory)))
    title = ", ".join(args.configfile) or "config.yaml"
    print(f"Plan of {title} under the `{args.profile}` profile\n")
    print(format_table(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
