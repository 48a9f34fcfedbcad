"""Comparing two result folders: identical cells (timing aside), a changed value beyond its CI,
cells in one run only, and provenance differences."""

from __future__ import annotations

import json

import pandas as pd

from workflow_scripts.compare import compare, format_report, main, values_hash
from workflow_scripts.core.provenance import write_parquet


def cell(acc: float, latency: float) -> pd.DataFrame:
    return pd.DataFrame({"model": ["m", "m"], "n_removed": [0, 1], "accuracy": [0.9, acc],
                         "ci_lo": [0.85, acc - 0.05], "ci_hi": [0.95, acc + 0.05],
                         "latency_ms": [latency, latency / 2]})  # fmt: skip


def meta(commit: str, lr: float = 0.1) -> dict:
    return {"config_slice": json.dumps({"lr": lr}), "git_commit": commit, "git_dirty": "false",
            "packages": json.dumps({"torch": "2.9.1"})}  # fmt: skip


def write_run(root, cells: dict[str, tuple[pd.DataFrame, dict]]) -> None:
    for rel, (df, m) in cells.items():
        write_parquet(df, root / "cells" / rel, m)


def test_timing_columns_do_not_count():
    assert values_hash(cell(0.8, 10.0)) == values_hash(cell(0.8, 99.0))
    assert values_hash(cell(0.8, 10.0)) != values_hash(cell(0.7, 10.0))


def test_two_runs_differing_in_one_cell(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, {"p/m/x.parquet": (cell(0.8, 10.0), meta("c1")),
                  "p/m/y.parquet": (cell(0.8, 10.0), meta("c1")),
                  "p/m/gone.parquet": (cell(0.8, 10.0), meta("c1"))})  # fmt: skip
    write_run(b, {"p/m/x.parquet": (cell(0.8, 12.5), meta("c2")),  # timing only
                  "p/m/y.parquet": (cell(0.6, 10.0), meta("c2", lr=0.2)),  # beyond the CI
                  "p/m/new.parquet": (cell(0.8, 10.0), meta("c2"))})  # fmt: skip
    diffs = {d.path: d for d in compare(a, b)}
    assert {p: d.status for p, d in diffs.items()} == {
        "cells/p/m/x.parquet": "identical", "cells/p/m/y.parquet": "changed",
        "cells/p/m/gone.parquet": "only in A", "cells/p/m/new.parquet": "only in B",
    }  # fmt: skip
    y = diffs["cells/p/m/y.parquet"]
    assert y.columns == ["accuracy", "ci_lo", "ci_hi"] and y.beyond_ci == 1
    assert set(y.provenance) == {"config_slice", "git_commit"}
    assert set(diffs["cells/p/m/x.parquet"].provenance) == {"git_commit"}
    text = format_report(list(diffs.values()))
    assert "4 result files" in text and "beyond CI: 1" in text
    assert main([str(a), str(b), "--strict"]) == 1
    assert main([str(a), str(a), "--strict"]) == 0
    assert "3 identical" in capsys.readouterr().out
