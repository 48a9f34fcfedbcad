"""The README's findings from the run: ``python -m workflow_scripts.report.readme`` (``make
readme-numbers``) rewrites the block between :data:`START` and :data:`END` in ``README.md`` from
``results/tables/overview.csv`` and ``results/tables/speechllm_summary.csv`` (when the run has
the SpeechLLM stage), naming the commit of the run (the overview's provenance), so that no
number there is typed by hand. The prose around the block is left as it is.

Conventions are the tables': layers numbered 1..L, accuracies, retained shares, WER and
parameter cuts in percent, each parameter share naming its denominator (whole model or
transformer stack). Torch-free.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
#: The pruning strategies the findings row names, in this order (those the run has).
STRATEGIES = ("block_influence", "knn_block_influence", "backward")
_SHORT = {"block_influence": "Block Influence", "knn_block_influence": "kNN-BI"}


def _pct(v, digits: int = 1) -> str:
    return "" if v is None or pd.isna(v) else f"{float(v):.{digits}f}%"


def _rows(overview: pd.DataFrame, model: str, finding: str) -> pd.DataFrame:
    return overview[
        (overview.model == model) & overview.finding.astype(str).str.startswith(finding)
    ]


def _removable(overview: pd.DataFrame, model: str, strategies,
               finding: str = "layers removable (") -> str:  # fmt: skip
    """'2 / 1 / 1 of 10 (layers 9 10 / 10 / 10)': the prefix headline of each strategy (on
    the point estimate; ``finding="layers removable with confidence"``: with confidence)."""
    rows = _rows(overview, model, finding).set_index("method")
    counts, named, total = [], [], ""
    for s in strategies:
        if s not in rows.index:
            counts.append("–")
            continue
        m = re.match(r"(\d+) of (\d+) layers[^:]*(?::\s*(.*))?", str(rows.result[s]))
        if not m:
            counts.append("?")
            continue
        counts.append(m[1])
        total = m[2]
        named.append(m[3] or "none")
    text = " / ".join(counts) + (f" of {total}" if total else "")
    return text + (f" (layers {' / '.join(named)})" if any(n != "none" for n in named) else "")


def findings_table(overview: pd.DataFrame, strategies=STRATEGIES) -> str:
    """The findings table: one row per question, one column per model (the overview's
    order), every cell from the overview's rows."""
    from workflow_scripts.core.tables import markdown_table

    models = list(dict.fromkeys(overview.model))
    present = [s for s in strategies if s in set(overview.method)]
    if not present:  # the run's own strategies
        removable = overview.finding.astype(str).str.startswith("layers removable")
        present = list(dict.fromkeys(overview[removable].method))
    questions: dict[str, dict[str, str]] = {}

    def put(question, model, text):
        questions.setdefault(question, {})[model] = text

    for m in models:
        base = _rows(overview, m, "fine-tuned model")
        if len(base):
            r = base.iloc[0]
            put("fine-tuned test accuracy (95% CI)", m, f"{_pct(r.accuracy_pct)} ({r.ci_pct})")
        groups = _rows(overview, m, "groups of similar layers")
        for g in groups.itertuples():
            put(f"groups of similar states ({g.method}; input = the stack's input)", m, g.result)
        names = " / ".join(_SHORT.get(s, s) for s in present)
        put(f"layers removable at ≥ the threshold, every smaller number too ({names}; "
            "layers numbered 1..L)", m, _removable(overview, m, present))  # fmt: skip
        if _rows(overview, m, "layers removable with confidence").size:
            put("the same with confidence (the retained share's 95% CI lower end keeps the "
                "threshold)", m,
                _removable(overview, m, present, "layers removable with confidence"))  # fmt: skip
        st = _rows(overview, m, "structured pruning")
        if len(st):
            r = st.iloc[0]
            put(f"structured pruning ({r.method}): result, accuracy retained", m,
                f"{r.result}; {_pct(r.retained_pct)} retained")  # fmt: skip
        mim = _rows(overview, m, "best mimicker")
        if len(mim):
            r = mim.iloc[0]
            put("best mimicker (chosen on validation): result, accuracy retained", m,
                f"{r.method}: {r.result}; {_pct(r.retained_pct)} retained")  # fmt: skip
        par = _rows(overview, m, "smallest model keeping")
        if len(par):
            r = par.iloc[0]
            put("smallest model keeping the threshold (Pareto frontier)", m,
                f"{r.method}: {r.result}")  # fmt: skip
    table = pd.DataFrame([{"question": q, **{m: v.get(m, "") for m in models}}
                          for q, v in questions.items()])  # fmt: skip
    return markdown_table(table)


def speechllm_table(summary: pd.DataFrame) -> str:
    """Per SpeechLLM and task: the unpruned WER (%) and, per strategy, the decoder layers
    removable within the ΔWER threshold, every smaller number too (named 1..L), from the
    SpeechLLM summary as written (percent, layers 1..L)."""
    from workflow_scripts.core.tables import markdown_table

    rows = []
    for (model, task), g in summary.groupby(["model", "task"], sort=False):
        r0 = g.iloc[0]
        removable = []
        for r in g.itertuples():
            named = getattr(r, "removed_layers_at_prefix", "")
            named = f" ({named})" if isinstance(named, str) and named else ""
            removable.append(f"{r.strategy} {int(r.max_removed_prefix)}{named}")
        rows.append({"SpeechLLM": model, "task": task,
                     "unpruned WER": _pct(r0.base_wer_pct),
                     f"decoder layers removable of {int(r0.n_layers)} (ΔWER ≤ "
                     f"{r0.delta_wer_threshold:g}, every smaller number too)":
                     ", ".join(removable)})  # fmt: skip
    return markdown_table(pd.DataFrame(rows))


def findings_block(overview: pd.DataFrame, commit: str,
                   speechllm: pd.DataFrame | None = None) -> str:  # fmt: skip
    """The text between the markers: the commit line, the findings table and (with the
    SpeechLLM stage) the SpeechLLM table."""
    parts = [
        f"Generated by `make readme-numbers` from `results/tables/overview.csv` of the run at "
        f"commit `{commit}`. Accuracies, retained shares, WER and parameter cuts in percent; "
        "layers numbered 1..L.",
        "",
        findings_table(overview),
    ]
    if speechllm is not None and len(speechllm):
        parts += ["SpeechLLM decoders (`results/tables/speechllm_summary.csv`):", "",
                  speechllm_table(speechllm)]  # fmt: skip
    return "\n".join(parts)


def rewrite(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block`` (each marker once)."""
    if (
        readme.count(START) != 1
        or readme.count(END) != 1
        or readme.index(START) > readme.index(END)
    ):
        raise ValueError(f"the README needs exactly one {START} ... {END} block")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block.rstrip()}\n{END}{tail}"


def run_commit(overview_csv: Path) -> str:
    """The commit of the run: the overview's provenance (its parquet beside the CSV), with
    '-dirty' when the working tree had uncommitted changes."""
    from workflow_scripts.core.provenance import read_provenance

    prov = read_provenance(overview_csv.with_suffix(".parquet"))
    commit = str(prov.get("git_commit") or "unknown")[:7]
    return commit + ("-dirty" if prov.get("git_dirty") == "true" else "")  # recorded as text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--overview", default="results/tables/overview.csv", type=Path)
    p.add_argument("--speechllm", default="results/tables/speechllm_summary.csv", type=Path)
    p.add_argument("--readme", default="README.md", type=Path)
    p.add_argument("--commit", help="the run's commit (default: the overview's provenance)")
    a = p.parse_args(argv)
    overview = pd.read_csv(a.overview)
    sllm = pd.read_csv(a.speechllm) if a.speechllm.is_file() else None
    block = findings_block(overview, a.commit or run_commit(a.overview), sllm)
    a.readme.write_text(rewrite(a.readme.read_text(), block))
    print(f"{a.readme}: findings rewritten from {a.overview}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
