"""Table helpers shared by every stage: stacking cell files, one markdown writer."""

from __future__ import annotations

import math
import re

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


# ----------------------------------------------------------------------------------------
# What a reader sees: one layer numbering, one unit per kind of number
# ----------------------------------------------------------------------------------------
#: Column-name words of shares that human-facing tables show in percent (accuracies, retained
#: shares, WER, sparsity); ΔWER (``delta_wer``) is a ratio and stays one.
_FRACTION_WORDS = re.compile(r"(accuracy|retained|relative|(^|_)wer(_|$)|sparsity|^ci_(lo|hi)$)")
_NOT_FRACTION = re.compile(r"(pct|_frac$|%|delta|bleu|_ms$|speedup|params|clips|^n_|_n$)")


def layer_numbers(index) -> list[int] | None:
    """1-based layer numbers (what every table names) of 0-based block indices (what the code
    and columns named ``*_index`` hold); None stays None."""
    if index is None or (not isinstance(index, list | tuple | np.ndarray) and pd.isna(index)):
        return None
    return [int(i) + 1 for i in index]


def layer_text(index) -> str:
    """'9 10': the 1-based layer numbers of 0-based block indices, space-separated ('' for
    none), as every table and tooltip writes removed layers."""
    layers = layer_numbers(index)
    return " ".join(map(str, layers)) if layers else ""


def state_name(state) -> str:
    """A hidden state's name: 'input' for state 0 (the stack's input), else the number ℓ of the
    layer whose output it is (1..L)."""
    return "input" if int(state) == 0 else str(int(state))


def is_fraction_column(name: str) -> bool:
    """Whether a column of that name holds a share that tables show in percent (by its name:
    accuracy, retained, relative accuracy, WER, sparsity, an accuracy CI end; not already in
    percent, ``_frac``, ΔWER, BLEU, latency, speed-up, counts)."""
    return bool(_FRACTION_WORDS.search(name)) and not _NOT_FRACTION.search(name)


def percent_columns(df: pd.DataFrame, columns=None, rename: dict | None = None) -> pd.DataFrame:
    """``df`` with its fraction columns in percent, each renamed ``<name>_pct`` (``_frac``
    replaced) unless ``rename`` names it: ``columns`` (default: every numeric column that
    :func:`is_fraction_column` names a share)."""
    d = df.copy()
    if columns is None:
        columns = [c for c in d.columns if is_fraction_column(str(c))
                   and pd.api.types.is_numeric_dtype(d[c])
                   and not pd.api.types.is_bool_dtype(d[c])]  # fmt: skip
    rename = dict(rename or {})
    names = {}
    for c in columns:
        if c not in d:
            continue
        d[c] = 100.0 * d[c].astype(float)
        names[c] = rename.get(c, f"{str(c).removesuffix('_frac')}_pct")
    return d.rename(columns=names)
