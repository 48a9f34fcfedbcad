"""The README's findings from the run: ``python -m workflow_scripts.report.readme`` (``make
readme-numbers``) rewrites the block between :data:`START` and :data:`END` in ``README.md`` from
``results/tables/overview.csv`` and ``results/tables/speechllm_summary.csv`` (when the run has
the SpeechLLM stage), naming the commit of the run (the overview's provenance), so that no
number there is typed by hand. The prose around the block is left as it is.

Latency ratios ("1.35x faster") carry their run-to-run spread when
``results/tables/latency_spread.csv`` (beside the overview) exists, written by
``benchmarks/latency_spread.py`` (the same cells timed again on the saved models): the range
over the stored and the re-measured runs, and that range relative to the median; a ratio the
spread file does not hold, or holds with another stored value (a file from another run), says
so instead. Without the file every ratio says :data:`NO_SPREAD`.

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

from workflow_scripts.report import runtime

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
#: The pruning strategies the findings row names, in this order (those the run has).
STRATEGIES = ("block_influence", "knn_block_influence", "backward")
_SHORT = {"block_influence": "Block Influence", "knn_block_influence": "kNN-BI"}
#: What a latency ratio says without a spread file.
NO_SPREAD = "(run-to-run spread: run benchmarks/latency_spread.py)"
#: The Pareto table's families -> the spread file's stages.
_STAGE = {"structured pruning": "structured", "mimicker": "mimic", "layer pruning": "pruning"}
_FASTER = re.compile(r"(\d+(?:\.\d+)?)x faster")


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


def spread_text(spread: pd.DataFrame | None, quoted: str, stage: str, model: str,
                method: str, n_removed: int | None = None) -> str:  # fmt: skip
    """The run-to-run spread of one latency ratio (``quoted``: as the overview writes it,
    e.g. "1.35") from the spread file (:mod:`benchmarks.latency_spread`): "(run-to-run
    1.31-1.37x over 3 runs: 4.4% of the ratio)"; :data:`NO_SPREAD` without a file; a note when
    the file lacks the setting or stores another ratio for it."""
    if spread is None:
        return NO_SPREAD
    d = spread[(spread.stage == stage) & (spread.model == model) & (spread.method == method)]
    if stage == "pruning":
        d = d[(d.n_removed == n_removed) & d.seed.isna()]
    if d.empty:
        return "(run-to-run spread: not re-measured by benchmarks/latency_spread.py)"
    r = d.iloc[0]
    if f"{float(r.stored):.2f}" != f"{float(quoted):.2f}":
        return (f"(run-to-run spread: the spread file holds {float(r.stored):.2f}x, of another "
                "run; rerun benchmarks/latency_spread.py)")  # fmt: skip
    return (f"(run-to-run {r.lo:.2f}-{r.hi:.2f}x over {int(r.runs)} runs: "
            f"{r.spread_pct:.1f}% of the ratio)")  # fmt: skip


def with_spread(result: str, spread: pd.DataFrame | None, stage: str, model: str,
                method: str, n_removed: int | None = None) -> str:  # fmt: skip
    """``result`` with the run-to-run spread (:func:`spread_text`) after its "x faster"."""
    m = _FASTER.search(result)
    if not m:
        return result
    text = spread_text(spread, m[1], stage, model, method, n_removed)
    return f"{result[: m.end()]} {text}{result[m.end() :]}"


def _pareto_setting(method: str) -> tuple[str, str, int | None]:
    """(stage, method, n removed) of an overview Pareto row's method, e.g. "structured
    pruning: target 0.6 (61% of ...)" -> ("structured", "target 0.6", None), "layer pruning:
    backward (2 of 10 layers removed)" -> ("pruning", "backward", 2)."""
    family, _, rest = str(method).partition(": ")
    name, _, setting = rest.partition(" (")
    n = re.match(r"(\d+) of", setting)
    return _STAGE.get(family, family), name, int(n[1]) if n else None


def _target_method(method: str) -> str:
    """The spread file's name of a structured cell from the overview's ("target 60%" ->
    "target 0.6")."""
    m = re.match(r"target ([\d.]+)%", str(method))
    return f"target {float(m[1]) / 100:g}" if m else str(method)


def findings_table(overview: pd.DataFrame, strategies=STRATEGIES,
                   spread: pd.DataFrame | None = None) -> str:  # fmt: skip
    """The findings table: one row per question, one column per model (the overview's
    order), every cell from the overview's rows; each latency ratio with its run-to-run
    spread (``spread``: the spread file, :func:`with_spread`)."""
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
            result = with_spread(r.result, spread, "structured", m, _target_method(r.method))
            put(f"structured pruning ({r.method}): result, accuracy retained", m,
                f"{result}; {_pct(r.retained_pct)} retained")  # fmt: skip
        mim = _rows(overview, m, "best mimicker")
        if len(mim):
            r = mim.iloc[0]
            result = with_spread(r.result, spread, "mimic", m, str(r.method))
            put("best mimicker (chosen on validation): result, accuracy retained", m,
                f"{r.method}: {result}; {_pct(r.retained_pct)} retained")  # fmt: skip
        for question, finding in (
            ("smallest model keeping the threshold (Pareto frontier)",
             "smallest model keeping the threshold ("),
            ("the same with confidence (Pareto frontier; the retained share's 95% CI lower end "
             "keeps the threshold)", "smallest model keeping the threshold with confidence"),
        ):  # fmt: skip
            par = _rows(overview, m, finding)
            if len(par):
                r = par.iloc[0]
                stage, method, n = _pareto_setting(r.method)
                result = with_spread(r.result, spread, stage, m, method, n)
                put(question, m, f"{r.method}: {result}")
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
                   speechllm: pd.DataFrame | None = None,
                   spread: pd.DataFrame | None = None,
                   spread_file: str = "results/tables/latency_spread.csv",
                   run_record: dict | None = None) -> str:  # fmt: skip
    """The text between the markers: the commit line, what the run cost (``run_record``:
    :mod:`.runtime`'s record of the ``make run`` that made the results, when there is one),
    the findings table (latency ratios with their run-to-run ``spread``, read from
    ``spread_file``) and (with the SpeechLLM stage) the SpeechLLM table."""
    timing = (
        f"Latency ratios with their run-to-run spread from `{spread_file}` "
        "(`benchmarks/latency_spread.py`: the same cells timed again on the saved models)."
        if spread is not None else
        "Latency ratios are single runs (their run-to-run spread: run "
        "`benchmarks/latency_spread.py`)."
    )  # fmt: skip
    parts = [
        f"Generated by `make readme-numbers` from `results/tables/overview.csv` of the run at "
        f"commit `{commit}`. Accuracies, retained shares, WER and parameter cuts in percent; "
        f"layers numbered 1..L. {timing}",
        "",
        *([runtime.sentence(run_record), ""] if run_record else []),
        findings_table(overview, spread=spread),
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


def shown_path(path: Path, overview_csv: Path) -> str:
    """``path`` as the README names it: under the results root as ``results/...`` (the root
    may be anywhere, e.g. a fresh clone's or a scratch folder, the README is the project's),
    else as given."""
    root = overview_csv.resolve().parent.parent
    try:
        return f"results/{path.resolve().relative_to(root).as_posix()}"
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--overview", default="results/tables/overview.csv", type=Path)
    p.add_argument("--speechllm", default="results/tables/speechllm_summary.csv", type=Path)
    p.add_argument("--readme", default="README.md", type=Path)
    p.add_argument("--spread", type=Path, help="the latency ratios' run-to-run spread "
                   "(benchmarks/latency_spread.py; default: latency_spread.csv beside the "
                   "overview)")  # fmt: skip
    p.add_argument("--commit", help="the run's commit (default: the overview's provenance)")
    a = p.parse_args(argv)
    overview = pd.read_csv(a.overview)
    sllm = pd.read_csv(a.speechllm) if a.speechllm.is_file() else None
    spread_csv = a.spread or a.overview.with_name("latency_spread.csv")
    spread = pd.read_csv(spread_csv) if spread_csv.is_file() else None
    record = runtime.read(a.overview.parent.parent)  # <results root>/logs/make_run.json
    commit = a.commit or run_commit(a.overview)
    if (
        record
        and a.commit is None
        and record.get("git_commit", "")[:7] != commit.removesuffix("-dirty")
    ):
        record = None  # the record of another run than the one the tables come from
    block = findings_block(overview, commit, sllm, spread, shown_path(spread_csv, a.overview),
                           record)  # fmt: skip
    a.readme.write_text(rewrite(a.readme.read_text(), block))
    print(f"{a.readme}: findings rewritten from {a.overview}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
