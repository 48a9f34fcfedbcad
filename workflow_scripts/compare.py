"""Compare two result folders cell by cell: ``python -m workflow_scripts.compare A B``.

For every parquet under ``cells/`` (and ``tables/`` with ``--tables``) of either folder it says
whether the cell is only in one run, whether its values are identical once the timing columns
(latency, seconds, speed-up: they measure the machine, not the method) are dropped, which
columns changed, how many values moved beyond their own 95% CI, and how the provenance differs
(config slice, commit, package versions). A refactor proves itself with every cell identical;
``--strict`` exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.core.provenance import content_hash, read_provenance

# Columns that measure the machine rather than the method: latencies, durations, speed-ups.
TIMING = re.compile(r"latency|(^|_)ms($|_)|seconds|speedup|(^|_)times?($|_)")
# Columns holding a value with its CI: value column -> (low, high).
CI_COLUMNS = {
    "value": ("ci_lo", "ci_hi"),
    "accuracy": ("ci_lo", "ci_hi"),
    "healed_accuracy": ("healed_ci_lo", "healed_ci_hi"),
    "backbone_accuracy": ("backbone_ci_lo", "backbone_ci_hi"),
}
PROVENANCE_KEYS = ("config_slice", "git_commit", "git_dirty", "packages")


def timing_columns(columns) -> list[str]:
    return [c for c in columns if TIMING.search(str(c))]


def values_hash(df: pd.DataFrame) -> str:
    """The content hash of a table without its timing columns."""
    return content_hash(df.drop(columns=timing_columns(df.columns)))


@dataclass
class CellDiff:
    path: str
    status: str  # identical | changed | only in A | only in B
    columns: list[str] = field(default_factory=list)
    beyond_ci: int = 0
    provenance: dict[str, tuple] = field(default_factory=dict)


def _equal(a: pd.Series, b: pd.Series) -> bool:
    try:
        return bool(a.equals(b)) or values_hash(a.to_frame()) == values_hash(b.to_frame())
    except Exception:  # unhashable mixtures: compare as text
        return a.astype(str).tolist() == b.astype(str).tolist()


def _beyond_ci(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """Values of B outside A's CI half-width around A's value (rows aligned)."""
    n = 0
    for col, (lo, hi) in CI_COLUMNS.items():
        if not {col, lo, hi} <= set(a.columns) & set(b.columns):
            continue
        va, vb = a[col].to_numpy(float), b[col].to_numpy(float)
        half = (a[hi].to_numpy(float) - a[lo].to_numpy(float)) / 2
        with np.errstate(invalid="ignore"):
            n += int(np.nansum(np.abs(va - vb) > np.nan_to_num(half, nan=0.0)))
    return n


def compare_cell(path: str, a: Path | None, b: Path | None) -> CellDiff:
    if a is None or b is None:
        return CellDiff(path, "only in A" if b is None else "only in B")
    da, db = pd.read_parquet(a), pd.read_parquet(b)
    diff = CellDiff(path, "identical")
    pa, pb = read_provenance(a), read_provenance(b)
    for key in PROVENANCE_KEYS:
        if pa.get(key) != pb.get(key):
            diff.provenance[key] = (pa.get(key), pb.get(key))
    if values_hash(da) == values_hash(db):
        return diff
    diff.status = "changed"
    cols = [c for c in dict.fromkeys([*da.columns, *db.columns]) if not TIMING.search(str(c))]
    if len(da) != len(db):
        diff.columns = [f"<rows: {len(da)} vs {len(db)}>"]
        return diff
    diff.columns = [
        c for c in cols
        if c not in da or c not in db
        or not _equal(da[c].reset_index(drop=True), db[c].reset_index(drop=True))
    ]  # fmt: skip
    diff.beyond_ci = _beyond_ci(da.reset_index(drop=True), db.reset_index(drop=True))
    return diff


def result_files(root: Path, tables: bool) -> dict[str, Path]:
    folders = ["cells", "tables"] if tables else ["cells"]
    return {
        str(p.relative_to(root)): p
        for f in folders
        for p in sorted((root / f).rglob("*.parquet"))
        if not p.name.startswith(".")
    }


def compare(a: Path, b: Path, tables: bool = False) -> list[CellDiff]:
    fa, fb = result_files(a, tables), result_files(b, tables)
    return [compare_cell(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))]


def _short(v) -> str:
    if v is None:
        return "-"
    text = str(v)
    try:  # package versions: only those that differ are interesting
        return ", ".join(f"{k}={x}" for k, x in sorted(json.loads(text).items()))[:80]
    except (ValueError, AttributeError):
        return text[:80]


def format_report(diffs: list[CellDiff], provenance: bool = True) -> str:
    counts = pd.Series([d.status for d in diffs]).value_counts().to_dict() if diffs else {}
    lines = [f"{len(diffs)} result files: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    for d in diffs:
        if d.status == "identical" and not (provenance and d.provenance):
            continue
        line = f"{d.status:10s} {d.path}"
        if d.columns:
            line += f"  columns: {', '.join(map(str, d.columns))}"
        if d.status == "changed":
            line += f"  beyond CI: {d.beyond_ci}"
        lines.append(line)
        if provenance:
            for key, (x, y) in d.provenance.items():
                lines.append(f"{'':12s}{key}: {_short(x)}  ->  {_short(y)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="results folder A (e.g. results)")
    ap.add_argument("b", type=Path, help="results folder B")
    ap.add_argument("--tables", action="store_true", help="compare tables/*.parquet too")
    ap.add_argument("--no-provenance", action="store_true", help="omit provenance differences")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every file is identical")
    args = ap.parse_args(argv)
    diffs = compare(args.a, args.b, args.tables)
    print(format_report(diffs, provenance=not args.no_provenance))
    if args.strict and any(d.status != "identical" for d in diffs):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
