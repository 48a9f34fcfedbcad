"""Table helpers shared by every stage: stacking cell files, one markdown writer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def concat_cells(paths: list[str]) -> pd.DataFrame:
    """Read and stack cell parquets (their provenance stays in the cell files)."""
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cell_text(v, floatfmt: str) -> str:
    if v is None or v is pd.NA or (isinstance(v, float | np.floating) and math.isnan(v)):
        return ""
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, float | np.floating):
        return format(float(v), floatfmt)
    if isinstance(v, list | tuple | np.ndarray):
        return " ".join(map(str, v))
    return str(v)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table of ``df``: floats formatted with ``floatfmt``, missing values
    empty, list cells space-separated. The one markdown writer of every stage's tables."""
    cols = list(map(str, df.columns))
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell_text(v, floatfmt) for v in rec) + " |")
    return "\n".join(lines) + "\n"
