"""What a run will ask for, before it runs: ``python -m workflow_scripts.resource_plan``
(``make plan``; add ``--configfile config/paper.yaml``, or several files, whose grids
combine: ``--configfile config/paper.yaml config/speechllm-paper.yaml``).

Plans the whole grid with a Snakemake dry run (``--forceall``; no data or checkpoints needed)
under a profile (default: ``slurm``, so GPU rules show their GPU) and prints, per rule and in
total: jobs, GPU or CPU, the largest ``mem_mb`` and ``runtime`` requested, the summed
requested runtime, the disk its outputs take (``disk_mb``, from the same estimates as the
rules' requests: ``workflow_scripts.core.sizes``, ``backbones.cache_plan.cache_bytes``) and the
estimated peak GPU memory of its largest job (``workflow_scripts.core.gpu_memory``). It says
where the clip counts behind the disk figures come from (``core.sizes.clip_counts``). A
resource Snakemake cannot know before the run (``<TBD>``: a default computed from input files
not made yet) is shown as ``?`` and listed under the table.
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
#: The resources the table sums or maximises; each must be a number in the dry run.
NUMERIC = ("mem_mb", "runtime", "disk_mb")


@dataclass
class RulePlan:
    rule: str
    jobs: int = 0
    gpu: bool = False
    mem_mb: int = 0
    runtime_min: int = 0
    runtime_total_min: int = 0
    disk_mb: int = 0
    gpu_mem_bytes: int | None = None
    wildcards: list[str] = field(default_factory=list)
    #: resource -> the value the dry run gave instead of a number (``<TBD>``)
    unknown: dict[str, str] = field(default_factory=dict)


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


def wildcard_dict(text: str) -> dict[str, str]:
    """``model=a, split=b`` -> {"model": "a", "split": "b"}."""
    return dict(kv.split("=", 1) for kv in text.split(", ") if "=" in kv)


def _number(value) -> int | None:
    try:
        return int(float(value or 0))
    except (TypeError, ValueError):
        return None


def summarize(jobs: list[dict], config: dict | None = None) -> list[RulePlan]:
    """Per rule: jobs, GPU, the largest ``mem_mb`` / ``runtime``, summed runtime and disk and,
    with ``config``, the largest estimated peak GPU memory. A resource that is not a number
    (``<TBD>``) counts as 0 and is recorded in the rule's ``unknown``."""
    from workflow_scripts.core import gpu_memory

    rules: dict[str, RulePlan] = {}
    for job in jobs:
        r = rules.setdefault(job["rule"], RulePlan(job["rule"]))
        res = job["resources"]
        values = {}
        for key in NUMERIC:
            values[key] = _number(res.get(key))
            if values[key] is None:
                r.unknown[key] = str(res[key])
                values[key] = 0
        r.jobs += 1
        r.gpu = r.gpu or (_number(res.get("gpu")) or 0) > 0 or bool(res.get("gres"))
        r.mem_mb = max(r.mem_mb, values["mem_mb"])
        r.runtime_min = max(r.runtime_min, values["runtime"])
        r.runtime_total_min += values["runtime"]
        r.disk_mb += values["disk_mb"]
        r.wildcards.append(job["wildcards"])
        if config is not None and r.gpu:
            est = gpu_memory.estimate(config, job["rule"], wildcard_dict(job["wildcards"]))
            if est is not None:
                r.gpu_mem_bytes = max(r.gpu_mem_bytes or 0, est)
    return list(rules.values())


def _gb(mb: float) -> str:
    return f"{mb / 1000:,.1f} GB" if mb >= 1000 else f"{mb:,.0f} MB"


def _gpu_gb(r: RulePlan) -> str:
    return "-" if r.gpu_mem_bytes is None else f"{r.gpu_mem_bytes / 1e9:,.1f} GB"


def _disk(r: RulePlan) -> str:
    return "?" if "disk_mb" in r.unknown else _gb(r.disk_mb)


def format_table(plan: list[RulePlan]) -> str:
    head = (
        "| rule | jobs | device | mem_mb (max) | runtime (max) | runtime (sum) | disk | "
        "GPU memory (est., max) |\n" + "| --- " * 8 + "|"
    )
    rows = [
        f"| {r.rule} | {r.jobs} | {'GPU' if r.gpu else 'CPU'} | {r.mem_mb:,} | "
        f"{r.runtime_min} min | {r.runtime_total_min / 60:,.1f} h | {_disk(r)} | {_gpu_gb(r)} |"
        for r in plan
    ]
    gpu_h = sum(r.runtime_total_min for r in plan if r.gpu) / 60
    cpu_h = sum(r.runtime_total_min for r in plan if not r.gpu) / 60
    peak = max(plan, key=lambda r: r.mem_mb) if plan else None
    gpu_peak = max((r for r in plan if r.gpu_mem_bytes), key=lambda r: r.gpu_mem_bytes,
                   default=None)  # fmt: skip
    disk = _gb(sum(r.disk_mb for r in plan))
    if any("disk_mb" in r.unknown for r in plan):
        disk += " + unknown (?)"
    total = [
        f"\n**Total:** {sum(r.jobs for r in plan)} jobs "
        f"({sum(r.jobs for r in plan if r.gpu)} GPU); disk {disk}; "
        f"peak job memory {peak.mem_mb:,} MB ({peak.rule}); "
        if peak
        else "\n**Total:** 0 jobs",
        f"peak GPU memory {_gpu_gb(gpu_peak)} ({gpu_peak.rule}, estimated); " if gpu_peak else "",
        f"requested time {gpu_h:,.1f} GPU-job hours + {cpu_h:,.1f} CPU-job hours "
        "(requests, i.e. upper bounds, not measurements).",
    ]
    notes = [
        f"\n- `{r.rule}`: {key} is `{value}` in the dry run (not known before the run); give "
        f"the rule a `{key}=` in {rule_file(r.rule)}"
        for r in plan
        for key, value in r.unknown.items()
    ]
    return "\n".join([head, *rows, "".join(total)]) + "".join(notes)


def rule_file(rule: str, root: Path = ROOT) -> str:
    """The rules/*.smk file that defines ``rule``."""
    for f in sorted((root / "rules").glob("*.smk")):
        if re.search(rf"^rule {re.escape(rule)}:", f.read_text(), re.M):
            return str(f.relative_to(root))
    return "rules/"


def configfile_args(configfiles: list[str]) -> list[str]:
    """Snakemake's options for ``configfiles``: one ``--configfile`` followed by all of them
    (a repeated ``--configfile`` would keep only the last)."""
    return ["--configfile", *configfiles] if configfiles else []


def dry_run(profile: str, extra: list[str], cwd: Path = ROOT, forceall: bool = True) -> str:
    """The output of ``snakemake -n`` (``--forceall``: every job of the grid; without it the
    jobs whose outputs are missing or out of date)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    snakemake = str(Path(sys.executable).parent / "snakemake")
    cmd = [snakemake, "-n", *(["--forceall"] if forceall else []), "--profile", profile, *extra]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def load_config(configfiles: list[str], directory: Path = ROOT) -> dict:
    """The run's config as the Snakefile builds it (``directory``/config.yaml < the
    ``configfiles``, whose ``outputs`` unite < ``directory``/config/site.yaml and
    ``$LAYER_REDUNDANCY_RESULTS``), validated."""
    import yaml

    from workflow_scripts import grid
    from workflow_scripts.core import site

    overrides = grid.command_line_overrides([Path(directory) / f for f in configfiles])
    config = yaml.safe_load((Path(directory) / "config.yaml").read_text())
    site_config = site.config_overrides(site.site_file(directory))
    return grid.validate(grid.assemble(config, site_config, overrides))


def clip_source(config: dict, directory: Path = ROOT) -> str:
    """One line: the clips per split the disk figures assume, and where they come from."""
    from workflow_scripts.core import paths, sizes
    from workflow_scripts.results_root import absolute

    results = str(absolute(config, directory))
    counts, source = sizes.clip_counts(config, paths.path("manifest", results))
    per = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    return f"Clips per split: {per} - from {source}."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="slurm", help="Snakemake profile (default: slurm)")
    ap.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[],
                    help="as for snakemake; several files combine their grids")  # fmt: skip
    ap.add_argument("-C", "--directory", type=Path, default=ROOT, help="project folder")
    args = ap.parse_args(argv)
    from workflow_scripts.results_root import absolute

    config = load_config(args.configfile, args.directory)
    extra = configfile_args(args.configfile)
    plan = summarize(parse_jobs(dry_run(args.profile, extra, args.directory)), config)
    title = ", ".join(args.configfile) or "config.yaml"
    print(f"Plan of {title} under the `{args.profile}` profile\n")
    print(format_table(plan))
    print(f"\n{clip_source(config, args.directory)}")
    print(f"Results root (the disk above is written there): {absolute(config, args.directory)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
