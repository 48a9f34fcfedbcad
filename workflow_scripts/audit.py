"""Provenance audit: is each result still what the current config, code and inputs would give?

``python -m workflow_scripts.audit [results/...] [--lineage PATH]`` (or ``make audit``) checks
every parquet under the given paths (default ``results/``), each against four things:

1. content - the table's values still hash to the ``content_hash`` stored with them (a hand
   edit that left the metadata alone shows as **tampered**);
2. inputs - each recorded input (``input_paths`` / ``inputs_sha256``) still has the sha256 it
   had when the result was made;
3. config and plan - one ``snakemake --detailed-summary`` call: the job's status (``params
   changed``: its config slice differs from the current config's; ``rule implementation
   changed``; ``updated input files`` ...) and whether Snakemake would rerun it; a result no
   job of the current config makes is an **orphan**;
4. code - the files that made it (the rule's script, the ``workflow_scripts`` modules it
   imports, the rule's ``.smk`` file) are unchanged since the recorded git commit (a result made
   from a dirty tree, or without git, cannot be proven and is reported, not failed).

With one path (or ``--lineage PATH``) it also prints that result's lineage: its inputs, their
inputs, ... back to the source files (the corpus, the shipped models), from Snakemake's record
of every job's inputs, with each node's own provenance where it has one.

Exit status: 0 when everything is current, 1 when anything is stale, tampered, orphaned or
missing, 2 when Snakemake cannot be asked.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from workflow_scripts.core.provenance import config_hash, content_hash, read_provenance, sha256_path

CURRENT, STALE, TAMPERED, ORPHAN, MISSING = "current", "STALE", "TAMPERED", "ORPHAN", "MISSING"
FAILING = {STALE, TAMPERED, ORPHAN, MISSING}


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
    """The stdout of ``snakemake --detailed-summary`` run in ``project``."""
    cmd = [sys.executable, "-m", "snakemake", "--detailed-summary", "--cores", "1", *(extra or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip
    if proc.returncode != 0 or "output_file\t" not in proc.stdout:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


# ----------------------------------------------------------------------------------------
# code: which files made a result, and did they change since the recorded commit
# ----------------------------------------------------------------------------------------
RULE_RE = re.compile(r"^(?:local)?rule\s+(\w+)\s*:", re.M)
SCRIPT_RE = re.compile(r"^\s+script:\s*\n\s+[\"']([^\"']+)[\"']", re.M)


def rule_sources(project: Path) -> dict[str, tuple[str, str | None]]:
    """rule -> (its .smk file, its script), both relative to ``project``, from the rules'
    text (``script:`` paths are relative to the .smk file)."""
    out: dict[str, tuple[str, str | None]] = {}
    files = [project / "Snakefile", *sorted((project / "rules").glob("*.smk"))]
    for smk in files:
        if not smk.is_file():
            continue
        text = smk.read_text()
        starts = [(m.start(), m.group(1)) for m in RULE_RE.finditer(text)]
        for i, (pos, name) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            m = SCRIPT_RE.search(text[pos:end])
            script = None
            if m:
                script = os.path.relpath((smk.parent / m.group(1)).resolve(), project.resolve())
            out[name] = (os.path.relpath(smk, project), script)
    return out


def _module_file(project: Path, module: str) -> Path | None:
    base = project / Path(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def import_closure(project: Path, script: str, package: str = "workflow_scripts") -> set[str]:
    """``script`` and every ``package`` module it imports, transitively (imports inside
    functions included), as paths relative to ``project``."""
    seen: set[str] = set()
    todo = [project / script]
    while todo:
        path = todo.pop()
        rel = os.path.relpath(path, project)
        if rel in seen or not path.is_file():
            continue
        seen.add(rel)
        here = ".".join(Path(rel).with_suffix("").parts[:-1])  # the module's package
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    mod = ".".join([*parts, node.module] if node.module else parts)
                else:
                    mod = node.module or ""
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for name in names:  # the module and its parent packages' __init__
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if parts[0] == package and (f := _module_file(project, prefix)):
                        todo.append(f)
    return seen


def _git(repo: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)


class CodeChecker:
    """Compares the files that made a result with the recorded commit (cached per commit)."""

    def __init__(self, project: Path):
        self.project = project
        top = _git(project, "rev-parse", "--show-toplevel")
        self.repo = Path(top.stdout.strip()) if top.returncode == 0 else None
        self._diff: dict[str, set[str] | None] = {}

    def changed_since(self, commit: str) -> set[str] | None:
        """Files (relative to the project) that differ between ``commit`` and the working
        tree, or None when the commit is unknown here."""
        if commit not in self._diff:
            ok = _git(self.repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0
            if not ok:
                self._diff[commit] = None
            else:
                out = _git(self.project, "diff", "--name-only", "--relative", commit, "--")
                self._diff[commit] = set(out.stdout.split())
        return self._diff[commit]

    def check(self, prov: dict, files: set[str]) -> tuple[bool, str]:
        """(stale?, detail) of the code of one result made by ``files``."""
        commit = prov.get("git_commit", "unknown")
        dirty = prov.get("git_dirty") == "true"
        if self.repo is None or commit in ("", "unknown"):
            return False, "code: not checked (no git)"
        changed = self.changed_since(commit)
        if changed is None:
            return False, f"code: commit {commit[:8]} not in this repository"
        hit = sorted(files & changed)
        if hit and not dirty:
            return True, f"code changed since {commit[:8]}: {', '.join(hit)}"
        if dirty:
            return False, f"code: {commit[:8]} + uncommitted changes (cannot be proven)"
        return False, f"code: {commit[:8]}"


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
    def __init__(self):
        self._d: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self._d:
            self._d[path] = sha256_path(path)
        return self._d[path]


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


def audit_file(path: str, jobs: dict[str, Job], code: CodeChecker | None,
               rules: dict, sha: ShaCache, root: Path) -> Finding:  # fmt: skip
    """The :class:`Finding` of one parquet (``path`` relative to ``root``)."""
    job = jobs.get(norm(path))
    f = Finding(path, CURRENT, rule=job.rule if job else "")
    prov = read_provenance(root / path)
    if not prov:
        f.reasons.append("no provenance metadata")
    else:
        for problem in (check_content(str(root / path), prov), check_config_record(prov)):
            if problem:
                f.status = TAMPERED
                f.reasons.append(problem)
        reasons, notes = check_inputs(prov, sha, root)
        f.reasons += reasons
        f.notes += notes
        if code is not None and job is not None and job.rule in rules:
            smk, script = rules[job.rule]
            files = {smk} | (import_closure(root, script) if script else set())
            stale, detail = code.check(prov, files)
            (f.reasons if stale else f.notes).append(detail)
        f.notes.append(f"slice {prov.get('slice_hash', '?')}")
    if job is None:
        f.reasons.append("no job of the current config makes it")
        if f.status == CURRENT:
            f.status = ORPHAN
    elif job.pending:
        f.reasons.append(f"snakemake: {job.status}, {job.plan}")
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
    """Findings for every parquet under ``paths`` (files or folders relative to ``root``),
    plus every other output of the current DAG under them that is missing or would rerun."""
    rules = rule_sources(root)
    code = CodeChecker(root) if check_code else None
    sha = ShaCache()
    files: list[str] = []
    for p in paths:
        full = root / p
        if full.is_dir():
            files += sorted(
                os.path.relpath(f, root)
                for f in full.rglob("*.parquet")
                if not f.name.startswith(".")
            )
        elif full.is_file():
            files.append(norm(p))
    members = [f for f in files if inside_directory_output(f, jobs)]
    files = [f for f in files if f not in members]
    findings = [audit_file(f, jobs, code, rules, sha, root) for f in files]
    seen = set(files)
    under = [norm(p) for p in paths]
    for out, job in sorted(jobs.items()):
        inside = any(out == u or out.startswith(u.rstrip("/") + "/") for u in under)
        if out in seen or not inside or not job.pending:
            continue
        status = MISSING if job.status == "missing" else STALE
        findings.append(Finding(out, status, job.rule, [f"snakemake: {job.status}, {job.plan}"]))
    return findings


# ----------------------------------------------------------------------------------------
# lineage
# ----------------------------------------------------------------------------------------
def safetensors_metadata(path: Path) -> dict:
    """The metadata of a safetensors file's header (no tensors read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return f.metadata() or {}


def node_provenance(path: Path) -> dict:
    """The provenance a result carries, whatever its kind (parquet metadata, safetensors
    metadata, a folder's provenance.json); {} when none."""
    try:
        if path.suffix == ".parquet" and path.is_file():
            return read_provenance(path)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m workflow_scripts.audit",
        description="Is each result current (config, code, inputs, content)? Exit 1 if not.",
    )
    ap.add_argument("paths", nargs="*", default=["results"],
                    help="result files or folders (default: results)")  # fmt: skip
    ap.add_argument("--lineage", metavar="PATH", help="print this result's lineage")
    ap.add_argument("-C", "--directory", default=".", help="the project (default: .)")
    ap.add_argument("--no-code", action="store_true", help="skip the git code check")
    ap.add_argument("-v", "--verbose", action="store_true", help="notes for current results")
    ap.add_argument("--snakemake-args", default="", help="extra snakemake arguments (quoted)")
    args = ap.parse_args(argv)
    root = Path(args.directory)
    try:
        jobs = parse_summary(snakemake_summary(root, args.snakemake_args.split()))
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"audit: cannot ask snakemake: {err}", file=sys.stderr)
        return 2
    findings = audit(args.paths, jobs, root, check_code=not args.no_code)
    print(format_findings(findings, args.verbose))
    target = args.lineage or (args.paths[0] if len(args.paths) == 1 and
                              (root / args.paths[0]).is_file() else None)  # fmt: skip
    if target:
        print(f"\nlineage of {target}:")
        print("\n".join(lineage(target, jobs, root)))
    return 1 if any(f.status in FAILING for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
