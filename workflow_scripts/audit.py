"""Provenance audit: is each output still what the current config, code, inputs and
environment would give?

``python -m workflow_scripts.audit [results/...] [--lineage PATH] [--configfile F ...]`` (or
``make audit [CONFIG=F]``) checks every output of the current DAG under the given paths (default:
the results root, ``results/`` unless ``results_dir`` moves it) - parquet cells and
tables, hidden-state caches, fine-tuned and exported models, block tables, feature files,
charts - each through the provenance it carries (parquet metadata) or its sidecar
(``<folder>/.provenance/<name>.json``, :func:`~workflow_scripts.core.provenance.write_sidecar`):

1. content - the output still hashes to what was recorded when it was written (a hand edit
   shows as **TAMPERED**);
2. inputs - each recorded input path still has the SHA-256 it had;
3. code - each project module the job loaded (recorded from ``sys.modules``) still has the
   digest it had (AST without docstrings: a comment or reformat changes nothing; no git
   needed);
4. environment - the tracked packages (torch, transformers, ...) have the versions recorded;
   a difference is named;
5. config and plan - one ``snakemake --detailed-summary`` call: whether Snakemake would rerun
   the job (its params hold the config slice, the planned code and the source digests); a
   parquet no job of the current config makes is an **ORPHAN**.

A result whose code cannot be checked is **UNVERIFIED** and fails the audit: one without
provenance or without module digests (made before they were recorded), or one whose job loaded
modules that its rule's plan did not cover (the plan would not rerun it when they change).

With one path (or ``--lineage PATH``) it also prints that result's lineage. ``--rerun`` (``make
rerun-stale``) reruns exactly what it flags (``snakemake --forcerun`` on those outputs, and
whatever is missing), then audits again.

Exit status: 0 when everything is current, 1 when anything is stale, tampered, unverified,
orphaned or missing, 2 when Snakemake cannot be asked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from workflow_scripts.core.provenance import config_hash, content_hash, read_provenance, sha256_path

CURRENT, STALE, TAMPERED, ORPHAN, MISSING = "current", "STALE", "TAMPERED", "ORPHAN", "MISSING"
UNVERIFIED = "UNVERIFIED"
FAILING = {STALE, TAMPERED, ORPHAN, MISSING, UNVERIFIED}
#: Statuses that `--rerun` forces (a missing output is made by the plain run).
RERUN = {STALE, TAMPERED, UNVERIFIED}


# ----------------------------------------------------------------------------------------
# Snakemake's view: one --detailed-summary call
# ----------------------------------------------------------------------------------------
@dataclass
class Job:
    """One output file of the current DAG, as ``snakemake --detailed-summary`` reports it."""

    output: str
    rule: str
    inputs: list[str]
    status: str  # ok | missing | params changed | rule implementation changed | ...
    plan: str  # no update | update pending

    @property
    def pending(self) -> bool:
        return self.plan == "update pending" or self.status != "ok"


def norm(path: str) -> str:
    return os.path.normpath(path)


def parse_summary(text: str) -> dict[str, Job]:
    """Output path -> :class:`Job` from the tab-separated ``--detailed-summary`` text (lines
    before its header - logging - are skipped)."""
    jobs: dict[str, Job] = {}
    header = None
    for line in text.splitlines():
        cols = line.split("\t")
        if header is None:
            if cols[0] == "output_file":
                header = cols
            continue
        if len(cols) != len(header):
            continue
        row = dict(zip(header, cols, strict=True))
        raw = row.get("input-file(s)", "-")
        inputs = [] if raw in ("-", "") else [norm(p) for p in raw.split(",")]
        jobs[norm(row["output_file"])] = Job(
            norm(row["output_file"]), row["rule"], inputs, row["status"], row["plan"]
        )
    return jobs


def snakemake_summary(project: Path, extra: list[str] | None = None, timeout=600) -> str:
    """The stdout of ``snakemake --detailed-summary`` run in ``project`` (``extra``: more
    options, e.g. ``--configfile``)."""
    cmd = [sys.executable, "-m", "snakemake", "--detailed-summary", "--cores", "1", *(extra or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip
    if proc.returncode != 0 or "output_file\t" not in proc.stdout:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


# ----------------------------------------------------------------------------------------
# code and environment
# ----------------------------------------------------------------------------------------
def check_code(prov: dict, root: Path) -> tuple[str | None, list[str], list[str]]:
    """(unverified reason or None, stale reasons, notes) of a result's recorded code: the
    digests of the modules its job loaded, compared with the files under ``root`` now."""
    from workflow_scripts.core import code

    raw = prov.get("code_modules")
    if not raw:
        return "no module digests recorded (made before they were): code cannot be checked", [], []
    unplanned = json.loads(prov.get("code_unplanned") or "[]")
    if unplanned:
        return (f"its job loaded modules its rule's plan did not cover, so a change to them "
                f"would not rerun it: {', '.join(unplanned)}"), [], []  # fmt: skip
    modules = json.loads(raw)
    gone = code.changed(modules, root)
    notes = [f"code: {len(modules)} modules checked (commit {prov.get('git_commit', '?')[:8]})"]
    if prov.get("code_planned") == "false":
        notes.append("made outside a planned job")
    return None, ([f"code changed since: {', '.join(gone)}"] if gone else []), notes


def check_packages(prov: dict, current: dict) -> list[str]:
    """A reason per tracked package whose version differs from the recorded one."""
    recorded = json.loads(prov.get("packages") or "{}")
    now = {name: current.get(name, "absent") for name in recorded}
    return [
        f"package {n} {recorded[n]} -> {now[n]}" for n in sorted(recorded) if recorded[n] != now[n]
    ]


# ----------------------------------------------------------------------------------------
# one result
# ----------------------------------------------------------------------------------------
@dataclass
class Finding:
    path: str
    status: str
    rule: str = ""
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class ShaCache:
    """SHA-256 of files and folders for one audit, remembered across audits by (size, mtime,
    inode) in ``.snakemake/digests.json`` of the project (:mod:`workflow_scripts.core.sources`),
    so an unchanged multi-GB cache is hashed once."""

    def __init__(self, root: Path | None = None):
        from workflow_scripts.core.sources import CACHE, DigestCache

        self._cache = DigestCache(Path(root) / CACHE if root is not None else None)
        self._d: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self._d:
            self._d[path] = self._cache.path_digest(path)
        return self._d[path]

    def save(self) -> None:
        self._cache.save()


def check_content(path: str, prov: dict) -> str | None:
    """None when the table still hashes to its recorded content hash, else the reason."""
    import pandas as pd

    recorded = prov.get("content_hash")
    if not recorded:
        return "no content hash recorded"
    df = pd.read_parquet(path)
    now = content_hash(df)
    if now == recorded or legacy_content_hash(df) == recorded:
        return None
    return f"content hash {now} != recorded {recorded}"


def legacy_content_hash(df) -> str:
    """The content hash of results written before it was computed on the Arrow form (the
    string form of every cell; matches for tables without list columns)."""
    import hashlib

    import pandas as pd

    from workflow_scripts.core.provenance import canonical_json

    h = hashlib.sha256()
    h.update(canonical_json(list(map(str, df.columns))).encode())
    h.update(pd.util.hash_pandas_object(df.astype(str), index=False).values.tobytes())
    return h.hexdigest()[:16]


def check_config_record(prov: dict) -> str | None:
    """The recorded cell config must hash to the recorded cell hash (metadata not edited)."""
    try:
        cell = json.loads(prov.get("config_slice", "null"))
    except json.JSONDecodeError:
        return "config_slice is not JSON"
    if prov.get("slice_hash") and config_hash(cell) != prov["slice_hash"]:
        return "recorded config_slice does not hash to the recorded slice_hash"
    return None


def check_inputs(prov: dict, sha: ShaCache, root: Path) -> tuple[list[str], list[str]]:
    """(reasons, notes): each recorded input path must still have its recorded sha256;
    recorded digests without a path (e.g. of the audio a manifest lists) are noted."""
    hashes = json.loads(prov.get("inputs_sha256") or "{}")
    paths = json.loads(prov.get("input_paths") or "{}")
    reasons, notes = [], []
    for name, recorded in sorted(hashes.items()):
        p = paths.get(name)
        if p is None:
            notes.append(f"input {name}: digest {recorded[:12]} (no path recorded)")
            continue
        full = root / p
        if not full.exists():
            reasons.append(f"input {name} ({p}) is gone")
        elif sha(str(full)) != recorded:
            reasons.append(f"input {name} ({p}) changed since")
    return reasons, notes


def result_provenance(full: Path) -> tuple[dict, str]:
    """(provenance, where) of an output: a parquet's metadata, else its sidecar."""
    from workflow_scripts.core.provenance import sidecar_path

    if full.suffix == ".parquet" and full.is_file():
        prov = read_provenance(full)
        if prov:
            return prov, "metadata"
    side = sidecar_path(full)
    if side.is_file():
        try:
            return json.loads(side.read_text()), "sidecar"
        except json.JSONDecodeError:
            return {}, "sidecar"
    return {}, ""


def audit_file(path: str, jobs: dict[str, Job], sha: ShaCache, root: Path,
               check_code_: bool = True, packages: dict | None = None) -> Finding:  # fmt: skip
    """The :class:`Finding` of one output (``path`` relative to ``root``)."""
    job = jobs.get(norm(path))
    f = Finding(path, CURRENT, rule=job.rule if job else "")
    full = root / path
    prov, where = result_provenance(full)
    unverified = None
    if not prov:
        unverified = "no provenance recorded (no metadata, no sidecar)"
    else:
        if where == "metadata":
            problems = [check_content(str(full), prov)]
        else:
            recorded = prov.get("output_sha256")
            now = sha(str(full))
            problems = [None if recorded == now else
                        f"output sha256 {now[:12]} != recorded {str(recorded)[:12]}"]  # fmt: skip
        problems.append(check_config_record(prov))
        for problem in filter(None, problems):
            f.status = TAMPERED
            f.reasons.append(problem)
        reasons, notes = check_inputs(prov, sha, root)
        f.reasons += reasons
        f.notes += notes
        if check_code_:
            unverified, stale, notes = check_code(prov, root)
            f.reasons += stale
            f.notes += notes
            f.reasons += check_packages(prov, packages or {})
        f.notes.append(f"slice {prov.get('slice_hash', '?')}")
    if job is None:
        f.reasons.append("no job of the current config makes it")
        if f.status == CURRENT:
            f.status = ORPHAN
    elif job.pending:
        f.reasons.append(f"snakemake: {job.status}, {job.plan}")
    if unverified and f.status == CURRENT:
        f.status = UNVERIFIED
        f.reasons.insert(0, unverified)
    if f.reasons and f.status == CURRENT:
        f.status = STALE
    return f


def inside_directory_output(path: str, jobs: dict[str, Job]) -> str | None:
    """The directory output of the current DAG that ``path`` lies inside (a file a job wrote
    into its ``directory()`` output, e.g. a speech split's ``manifest.parquet``), or None.
    Such a file is part of that output, which Snakemake's plan judges; it is not a result."""
    parts = Path(norm(path)).parents
    return next((str(d) for d in parts if str(d) in jobs and str(d) != "."), None)


def audit(paths: list[str], jobs: dict[str, Job], root: Path,
          check_code: bool = True) -> list[Finding]:  # fmt: skip
    """Findings for every output of the current DAG under ``paths`` (files or folders relative
    to ``root``) - missing ones included - and every parquet there that no job makes."""
    from workflow_scripts.core.provenance import package_versions

    sha = ShaCache(root)
    packages = package_versions()
    under = [norm(p) for p in paths]

    def inside(out: str) -> bool:
        return any(out == u or out.startswith(u.rstrip("/") + "/") or u == "." for u in under)

    outputs = {out for out in jobs if inside(out)}
    for p in paths:  # parquets on disk: results, or orphans
        full = root / p
        found = full.rglob("*.parquet") if full.is_dir() else [full] if full.is_file() else []
        for f in found:
            # named as the audited path is (as Snakemake names outputs: relative to the
            # project, or absolute for a results root given as an absolute path)
            below = os.path.relpath(f, full)
            rel = norm(os.path.join(p, below))
            if f.suffix == ".parquet" and not any(part.startswith(".")
                                                  for part in Path(below).parts):  # fmt: skip
                if not inside_directory_output(rel, jobs):
                    outputs.add(rel)
    findings = []
    for out in sorted(outputs):
        job = jobs.get(out)
        if not (root / out).exists():
            if job is not None and job.pending:
                status = MISSING if job.status == "missing" else STALE
                findings.append(
                    Finding(out, status, job.rule, [f"snakemake: {job.status}, {job.plan}"])
                )
            continue
        if job is not None and job.rule == "all":
            continue
        findings.append(audit_file(out, jobs, sha, root, check_code, packages))
    sha.save()
    return findings


def rerun_targets(findings: list[Finding], jobs: dict[str, Job]) -> list[str]:
    """The outputs ``--rerun`` forces: those flagged stale, tampered or unverified that a job
    of the current DAG makes."""
    return sorted(f.path for f in findings if f.status in RERUN and f.path in jobs)


# ----------------------------------------------------------------------------------------
# lineage
# ----------------------------------------------------------------------------------------
def safetensors_metadata(path: Path) -> dict:
    """The metadata of a safetensors file's header (no tensors read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return f.metadata() or {}


def node_provenance(path: Path) -> dict:
    """The provenance a result carries, whatever its kind (parquet metadata, its sidecar,
    safetensors metadata, a folder's provenance.json); {} when none."""
    try:
        prov, _ = result_provenance(path)
        if prov:
            return prov
        if path.suffix == ".safetensors" and path.is_file():
            return safetensors_metadata(path)
        if path.is_dir() and (path / "provenance.json").is_file():
            return json.loads((path / "provenance.json").read_text())
    except Exception:  # a node we cannot read is shown without provenance
        return {}
    return {}


def lineage(path: str, jobs: dict[str, Job], root: Path) -> list[str]:
    """Tree lines from ``path`` back to its source files through the jobs' recorded inputs."""
    lines: list[str] = []

    def describe(p: str) -> str:
        job = jobs.get(p)
        parts = [f"rule {job.rule}", job.status, job.plan] if job else ["source"]
        prov = node_provenance(root / p)
        if prov.get("slice_hash"):
            parts.append(f"slice {prov['slice_hash']}")
        if prov.get("git_commit"):
            dirty = "+dirty" if prov.get("git_dirty") == "true" else ""
            parts.append(f"commit {prov['git_commit'][:8]}{dirty}")
        if prov.get("end_time"):
            parts.append(f"made {prov['end_time']}")
        if not job and (root / p).exists():
            parts.append(f"sha256 {sha256_path(root / p)[:12]}")
        return f"{p}  [{', '.join(parts)}]"

    shown: set[str] = set()

    def walk(p: str, prefix: str, last: bool, depth: int) -> None:
        branch = "" if depth == 0 else ("└─ " if last else "├─ ")
        job = jobs.get(p)
        kids = job.inputs if job else []
        if p in shown:  # a shared input's own inputs are listed once
            lines.append(prefix + branch + p + ("  (inputs above)" if kids else ""))
            return
        shown.add(p)
        lines.append(prefix + branch + describe(p))
        sub = prefix + ("" if depth == 0 else ("   " if last else "│  "))
        for i, k in enumerate(kids):
            walk(k, sub, i == len(kids) - 1, depth + 1)

    walk(norm(path), "", True, 0)
    return lines


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------
def format_findings(findings: list[Finding], verbose: bool = False) -> str:
    w = max([len(f.path) for f in findings] + [6])
    rw = max([len(f.rule) for f in findings] + [4])
    lines = [f"{'STATUS':9} {'RESULT':{w}} {'RULE':{rw}} DETAIL"]
    for f in findings:
        detail = "; ".join(f.reasons + (f.notes if verbose or not f.reasons else []))
        lines.append(f"{f.status:9} {f.path:{w}} {f.rule:{rw}} {detail}")
    counts = {s: sum(f.status == s for f in findings) for s in (CURRENT, *sorted(FAILING))}
    lines.append(", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "no results")
    return "\n".join(lines)


def results_dir(configfiles: list[str], project: Path) -> str:
    """The run's results root as the rules name it (``results_dir``: relative to ``project``
    or absolute), from ``project``'s config.yaml, ``configfiles``, site file and
    ``$LAYER_REDUNDANCY_RESULTS``; ``results`` when the config cannot be read (Snakemake's
    own error then says why)."""
    from workflow_scripts.core.paths import RESULTS, results_root
    from workflow_scripts.resource_plan import load_config

    try:
        return results_root(load_config(configfiles, project))
    except Exception:
        return RESULTS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m workflow_scripts.audit",
        description="Is each result current (config, code, inputs, content)? Exit 1 if not.",
    )
    ap.add_argument("paths", nargs="*",
                    help="result files or folders (default: the results root)")  # fmt: skip
    ap.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[],
                    help="the run's config files, as for snakemake")  # fmt: skip
    ap.add_argument("--lineage", metavar="PATH", help="print this result's lineage")
    ap.add_argument("-C", "--directory", default=".", help="the project (default: .)")
    ap.add_argument("--no-code", action="store_true",
                    help="skip the code and package checks")  # fmt: skip
    ap.add_argument("--rerun", action="store_true",
                    help="rerun what is flagged (--forcerun), then audit again")  # fmt: skip
    ap.add_argument("--profile", default="profiles/local",
                    help="the Snakemake profile of --rerun (default: profiles/local)")  # fmt: skip
    ap.add_argument("-v", "--verbose", action="store_true", help="notes for current results")
    ap.add_argument("--snakemake-args", default="", help="extra snakemake arguments (quoted)")
    args = ap.parse_args(argv)
    root = Path(args.directory)
    extra = [*(["--configfile", *args.configfile] if args.configfile else []),
             *args.snakemake_args.split()]  # fmt: skip
    if not args.paths:
        args.paths = [results_dir(args.configfile, root)]
    try:
        jobs = parse_summary(snakemake_summary(root, extra))
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"audit: cannot ask snakemake: {err}", file=sys.stderr)
        return 2
    findings = audit(args.paths, jobs, root, check_code=not args.no_code)
    print(format_findings(findings, args.verbose))
    if args.rerun:
        targets = rerun_targets(findings, jobs)
        print(f"\nrerunning {len(targets)} flagged outputs (and anything missing)", flush=True)
        cmd = [sys.executable, "-m", "snakemake", "--profile", args.profile, *extra]
        if targets:
            cmd += ["--forcerun", *targets]
        if subprocess.run(cmd, cwd=root).returncode != 0:
            print("audit: the rerun failed", file=sys.stderr)
            return 1
        print("\naudit after the rerun:")
        return main([a for a in (argv if argv is not None else sys.argv[1:]) if a != "--rerun"])
    target = args.lineage or (args.paths[0] if len(args.paths) == 1 and
                              (root / args.paths[0]).is_file() else None)  # fmt: skip
    if target:
        print(f"\nlineage of {target}:")
        print("\n".join(lineage(target, jobs, root)))
    return 1 if any(f.status in FAILING for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
