"""The overview: the paper's headline questions, one row per model and finding, computed from the
stages' aggregated tables (``results/tables/overview.{md,csv,parquet}`` + chart).

Conventions, stated once and followed by every table and chart of the report:

* a **layer** is one transformer layer (block) of the stack, numbered 1..L; **state** ℓ is the
  output of layer ℓ and state 0 the stack's input (``output_hidden_states`` order), so a
  group "3-5" is the outputs of layers 3 to 5 and "layers removed 2, 7" names layers 2 and 7;
* a **group** is a run of consecutive similar states found by the similarity stage;
* accuracy-like values are percentages; every accuracy carries its clips (``eval_clips``:
  the shared evaluation set) and, where it has one, its 95% CI;
* **meets** = keeps at least the threshold (95%) of the unpruned model's accuracy on the same
  clips, on the point estimate (``meets_threshold``) and with confidence
  (``meets_with_confidence``: the lower end of the retained share's paired bootstrap interval
  over clips, ``retained_ci_pct``, keeps it; :mod:`workflow_scripts.core.retained`). Layers
  removable and the Pareto pick are given both ways, in two rows each; the one without "with
  confidence" in its finding (the point estimate) is the headline.
"""

from __future__ import annotations

import math

import pandas as pd

COLUMNS = [
    "model", "finding", "method", "result", "accuracy_pct", "ci_pct", "retained_pct",
    "retained_ci_pct", "eval_clips", "meets_threshold", "meets_with_confidence", "also",
]  # fmt: skip
#: The overview's two findings of layer pruning: the removable count on the point estimate and
#: with confidence (every smaller number too, both).
REMOVABLE = "layers removable (every smaller number too)"
REMOVABLE_CI = "layers removable with confidence (every smaller number too, retained CI lower end)"
#: The Pareto pick both ways: on the point estimate (the headline) and with confidence.
PARETO = "smallest model keeping the threshold (Pareto frontier)"
PARETO_CI = (
    "smallest model keeping the threshold with confidence (Pareto frontier, retained CI lower end)"
)


def _pct(x) -> float:
    return 100.0 * float(x) if x is not None and pd.notna(x) else math.nan


def _ci(lo, hi) -> str:
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return ""
    return f"{100 * lo:.1f}-{100 * hi:.1f}"


def _row(model, finding, method, result, acc=math.nan, lo=None, hi=None, retained=math.nan,
         n=math.nan, meets=None, also="", retained_ci=(None, None),
         meets_ci=None) -> dict:  # fmt: skip
    return {"model": model, "finding": finding, "method": method, "result": result,
            "accuracy_pct": _pct(acc), "ci_pct": _ci(lo, hi), "retained_pct": _pct(retained),
            "retained_ci_pct": _ci(*retained_ci), "eval_clips": n, "meets_threshold": meets,
            "meets_with_confidence": meets_ci, "also": also}  # fmt: skip


def _retained_ci(row) -> tuple:
    """(retained_lo, retained_hi) of a table row, a Series or a named tuple (None where the
    table has no such column)."""
    get = row.get if isinstance(row, pd.Series) else (lambda k: getattr(row, k, None))
    return get("retained_lo"), get("retained_hi")


def _confident(lo, threshold: float):
    """Whether a retained interval's lower end keeps ``threshold``; None without one."""
    return None if lo is None or pd.isna(lo) else bool(lo >= threshold)


def group_spans(rows: pd.DataFrame) -> str:
    """'input-2, 3-10': a model's groups of similar states (state 0 shown as 'input')."""
    from workflow_scripts.core.tables import state_name as name

    rows = rows.sort_values("block")
    return ", ".join(f"{name(a)}-{name(b)}" for a, b in zip(rows.first_state, rows.last_state,
                                                            strict=True))  # fmt: skip


def baseline_rows(baseline: pd.DataFrame) -> list[dict]:
    out = []
    for r in baseline[baseline.split == "testing"].itertuples(index=False):
        params = f", {r.params_total / 1e6:.2f}M parameters" if hasattr(r, "params_total") else ""
        out.append(_row(r.model, "fine-tuned model (test accuracy)", "unpruned",
                        f"{int(r.num_layers)} layers{params}", r.accuracy, r.ci_lo, r.ci_hi,
                        1.0, r.n))  # fmt: skip
    return out


def group_rows(groups: pd.DataFrame) -> list[dict]:
    return [_row(m, "groups of similar layers", metric, group_spans(g))
            for (m, metric), g in groups.groupby(["model", "metric"], sort=False)]  # fmt: skip


def pruning_rows(pruning: pd.DataFrame, threshold: float) -> list[dict]:
    """Per model and strategy (random: mean over seeds) the headline: the most layers removed
    such that every smaller number also keeps the threshold; the count that allows dips is
    given beside it."""
    from workflow_scripts.pruning.report import summary_table

    s = summary_table(pruning, threshold)
    s = s[s.seed.isna()] if len(s) else s
    out = []
    for r in s.itertuples(index=False):
        curve = pruning[(pruning.model == r.model) & (pruning.strategy == r.strategy)]
        curve = curve[curve.seed.isna()] if "seed" in curve else curve
        at = curve[curve.n_removed == r.max_removed_prefix].iloc[0]
        n = getattr(at, "eval_clips", getattr(at, "n_utterances", math.nan))
        result = removal_text(r.max_removed_prefix, r.n_layers, at.get("removed"), "layers")
        also = (
            ""
            if r.max_removed == r.max_removed_prefix
            else (f"{int(r.max_removed)} if a dip below {100 * threshold:g}% at fewer is allowed")
        )
        meets = bool(at.relative_accuracy >= threshold) if r.max_removed_prefix else None
        ci = _retained_ci(at)
        meets_ci = _confident(ci[0], threshold) if r.max_removed_prefix else None
        out.append(_row(r.model, REMOVABLE, r.strategy,
                        result, at.accuracy, at.get("ci_lo"), at.get("ci_hi"),
                        at.relative_accuracy, n, meets,
                        also, ci, meets_ci))  # fmt: skip
        k = getattr(r, "max_removed_prefix_ci", None)
        if k is None or pd.isna(k):
            continue
        at = curve[curve.n_removed == int(k)].iloc[0]
        ci = _retained_ci(at)
        out.append(_row(r.model, REMOVABLE_CI, r.strategy,
                        removal_text(k, r.n_layers, at.get("removed"), "layers"),
                        at.accuracy, at.get("ci_lo"), at.get("ci_hi"), at.relative_accuracy, n,
                        bool(at.relative_accuracy >= threshold) if k else None,
                        f"{int(r.max_removed_prefix)} on the point estimate", ci,
                        _confident(ci[0], threshold) if k else None))  # fmt: skip
    return out


def mimic_rows(mimic: pd.DataFrame, threshold: float) -> list[dict]:
    """Per model the best mimicker (no_mimic excluded), chosen on the *validation* split: the
    highest ``val_accuracy`` (fewer parameters on a tie), so the test accuracy reported for
    it is not the one it was picked on. The row gives its test accuracy and retained share."""
    from workflow_scripts.report.pareto import _speedup

    d = mimic[mimic.kind != "no_mimic"].copy()
    if d.empty:
        return []
    if "val_accuracy" not in d:
        raise KeyError("the mimic table has no val_accuracy: the best mimicker is chosen on "
                       "the validation split (rerun the mimic cells)")  # fmt: skip
    d["retained"] = d.accuracy / d.backbone_accuracy
    d["speed"] = _speedup(d, "model_ms", "mimicked_model_ms").to_numpy()
    d = d.sort_values(["val_accuracy", "mimicked_model_params"], ascending=[False, True],
                      kind="stable")  # fmt: skip
    out = []
    for r in d.groupby("model", sort=False).head(1).itertuples(index=False):
        cut = 100 * (1 - r.mimicked_model_params / r.model_params)
        stack = (f" ({100 * (1 - r.mimicker_params / r.stack_params):.0f}% of the stack's)"
                 if getattr(r, "stack_params", 0) else "")  # fmt: skip
        result = f"{cut:.0f}% fewer whole-model parameters{stack}, {r.speed:.2f}x faster"
        n = getattr(r, "eval_clips", getattr(r, "n", math.nan))
        also = f"chosen on validation accuracy ({100 * r.val_accuracy:.1f}%)"
        out.append(_row(r.model, "best mimicker (replaces the stack)", f"{r.kind}-{int(r.depth)}",
                        result, r.accuracy, r.ci_lo, r.ci_hi, r.retained, n,
                        bool(r.retained >= threshold), also, _retained_ci(r),
                        _confident(_retained_ci(r)[0], threshold)))  # fmt: skip
    return out


def structured_rows(structured: pd.DataFrame, threshold: float) -> list[dict]:
    """Per model the cell of the highest target tried (named as such)."""
    from workflow_scripts.report.pareto import _speedup

    d = structured.copy()
    d["speed"] = _speedup(d, "base_latency_ms", "latency_ms").to_numpy()
    out = []
    for r in d.sort_values("target_sparsity").groupby("model", sort=False).tail(1).itertuples():
        result = (f"{100 * r.achieved_sparsity:.0f}% of the stack's attention + FFN "
                  f"parameters removed, {r.speed:.2f}x faster")  # fmt: skip
        n = getattr(r, "eval_clips", getattr(r, "n_utterances", math.nan))
        out.append(_row(r.model, "structured pruning (highest target tried)",
                        f"target {100 * r.target_sparsity:g}%", result, r.accuracy, r.ci_lo,
                        r.ci_hi, r.retained, n, bool(r.retained >= threshold), "",
                        _retained_ci(r), _confident(_retained_ci(r)[0], threshold)))  # fmt: skip
    return out


def pareto_rows(pareto: pd.DataFrame) -> list[dict]:
    """Per model the smallest frontier point keeping the threshold (:data:`PARETO`, on the
    point estimate: the headline) and, when the Pareto table has the interval, the one
    keeping it with confidence (:data:`PARETO_CI`)."""
    from workflow_scripts.report.pareto import smallest_meeting

    confident = pareto.retained_lo_pct.notna().any() if "retained_lo_pct" in pareto else False
    out = []
    for finding, ci in ((PARETO, False), (PARETO_CI, True)):
        if ci and not confident:
            continue
        best = smallest_meeting(pareto, ci)
        for model in dict.fromkeys(pareto.model):
            r = best[best.model == model]
            if r.empty:
                out.append(_row(model, finding, "none", "no compressed model keeps it",
                                meets=None if ci else False,
                                meets_ci=False if ci else None))  # fmt: skip
                continue
            r = r.iloc[0]
            size = (f"{r.params_pct:.0f}% of the whole model's parameters"
                    if pd.notna(r.params_pct)
                    else f"{int(r.total_params):,} parameters")  # fmt: skip
            result = f"{size}, {r.speedup:.2f}x faster"
            lo, hi = (r.get(k) for k in ("retained_lo_pct", "retained_hi_pct"))
            interval = (None, None) if lo is None else (lo / 100, hi / 100)
            out.append(_row(model, finding, f"{r.family}: {r.method} ({r.setting})", result,
                            r.accuracy_pct / 100, None, None, r.retained_pct / 100,
                            r.eval_clips, bool(r.meets_threshold), "", interval,
                            r.get("meets_with_confidence")))  # fmt: skip
    return out


def overview_table(baseline: pd.DataFrame, blocks=None, pruning=None, mimic=None,
                   structured=None, pareto=None, threshold: float = 0.95):  # fmt: skip
    """The overview's rows (see the module docstring), models in the baseline's order."""
    rows = baseline_rows(baseline)
    for table, fn in ((blocks, group_rows), (pruning, pruning_rows), (mimic, mimic_rows),
                      (structured, structured_rows), (pareto, pareto_rows)):  # fmt: skip
        if table is not None and len(table):
            rows += fn(table) if fn in (group_rows, pareto_rows) else fn(table, threshold)
    d = pd.DataFrame(rows, columns=COLUMNS)
    d["eval_clips"] = pd.array(d.eval_clips.round(), dtype="Int64")
    order = {m: i for i, m in enumerate(dict.fromkeys(baseline.model))}
    d["_m"] = d.model.map(order)
    return d.sort_values("_m", kind="stable").drop(columns="_m").reset_index(drop=True)


def removal_text(n, n_layers, removed=None, what: str = "layers", pct_fmt: str = ".0f") -> str:
    """'2 of 10 layers (20%): 9 10': how many of the stack's layers a setting removes and
    which, numbered 1..L (``removed``: the 0-based block indices of the code; none named when
    null, e.g. the mean over random seeds)."""
    from workflow_scripts.core.tables import layer_text

    n, L = int(n), int(n_layers)
    text = f"{n} of {L} {what} ({100 * n / L:{pct_fmt}}%)"
    named = layer_text(removed) if n else ""
    return f"{text}: {named}" if named else text


def speechllm_rows(summary: pd.DataFrame, overlap: pd.DataFrame) -> pd.DataFrame:
    """The SpeechLLM decoders' headline (Moumen et al.), one row per SpeechLLM x task x
    strategy: the unpruned WER, the decoder layers removable with relative WER degradation
    within the threshold (every smaller number too, named 1..L), the WER there, and the healed
    WER; then one row per factor (encoder, task, input type) with the mean Jaccard overlap of
    the redundant blocks the angular distance picks. ``summary`` and ``overlap`` are the
    tables as written (:func:`workflow_scripts.speechllm.report.display`: WER in percent,
    layers numbered 1..L)."""
    rows = []
    threshold = summary.delta_wer_threshold.iloc[0] if len(summary) else 0.25
    for r in summary.itertuples():
        n, L = r.max_removed_prefix, r.n_layers
        named = getattr(r, "removed_layers_at_prefix", "")
        named = "" if not isinstance(named, str) else named
        frac = f"{n} of {L} decoder layers ({n / L:.1%})" + (f": {named}" if n and named else "")
        healed = ""
        if pd.notna(r.healed_n):
            hn = int(r.healed_n) if isinstance(r.healed_n, float) else r.healed_n
            healed = f"n={hn}: {r.wer_before_heal_pct} -> {r.wer_after_heal_pct}"
        rows.append({"speechllm": r.model, "task": r.task, "method": r.strategy,
                     "unpruned WER %": r.base_wer_pct,
                     f"removable (ΔWER ≤ {r.delta_wer_threshold:g})": frac,
                     "WER % there": r.wer_at_max_pct, "healed WER %": healed})  # fmt: skip
    for r in overlap[overlap.model.astype(str).str.startswith("across")].itertuples():
        rows.append({"speechllm": r.model, "task": "", "method": "redundant block overlap",
                     f"removable (ΔWER ≤ {threshold:g})":
                     f"Jaccard {r.mean_jaccard:.2f}, identical {r.identical_share:.0%} "
                     f"(block of {r.n}, {int(r.pairs)} pairs)"})  # fmt: skip
    return pd.DataFrame(rows)


def overview_markdown(overview: pd.DataFrame, threshold: float, stages: list[str],
                      speechllm: pd.DataFrame | None = None) -> str:  # fmt: skip
    """The overview as a markdown document: conventions, then one table per model."""
    from workflow_scripts.core.tables import markdown_table

    pct = f"{100 * threshold:g}%"
    intro = [
        "# Overview", "",
        "Generated from the aggregated tables (stages: "
        f"{', '.join(stages) or 'baseline only'}). Accuracies are percentages on the shared "
        "evaluation clips (`eval_clips`), with their 95% CI; `retained` is the share of the "
        f"unpruned model's accuracy on the same clips; `meets` = keeps at least {pct}.", "",
        "Layers are numbered 1..L in every table, chart and export (`n of L layers (x%): 9 "
        "10` removes layers 9 and 10; decoder layers likewise); state ℓ is the "
        "output of layer ℓ, state 0 (`input`) the stack's input. A *group* is a run of "
        "consecutive similar states. Parameter shares name their denominator: the whole "
        "model, or the transformer stack.", "",
    ]  # fmt: skip
    body = []
    for model, g in overview.groupby("model", sort=False):
        table = g.drop(columns="model").rename(columns={
            "accuracy_pct": "accuracy %", "ci_pct": "95% CI", "retained_pct": "retained %",
            "meets_threshold": f"meets {pct}", "retained_ci_pct": "retained 95% CI",
            "meets_with_confidence": f"meets {pct} with confidence"})  # fmt: skip
        body += [f"## {model}", "", markdown_table(table, ".1f")]
    if speechllm is not None and len(speechllm):
        body += ["## SpeechLLM decoders", "",
                 "Word error rates on the held-out speakers' test utterances; a decoder "
                 "layer count is removable when it and every smaller one keep the relative WER "
                 "degradation (WER_n - WER_0) / WER_0 within the threshold (Moumen et al.). "
                 "Overlap: mean Jaccard index of the most redundant blocks between SpeechLLMs "
                 "that differ only in that factor.", "",
                 markdown_table(speechllm.fillna(""), ".1f")]  # fmt: skip
    return "\n".join(intro + body)


#: Short names of the findings on the chart's rows (the overview's finding, else its part
#: before " (").
_CHART_FINDING = {
    "fine-tuned model (test accuracy)": "fine-tuned model",
    PARETO: "Pareto pick",
    PARETO_CI: "Pareto pick with confidence",
}
#: Bar colours: meets the threshold (blue, good), below it (orange), no verdict (grey: the
#: unpruned reference, or nothing removable).
CHART_COLORS = {"meets": "#2166ac", "below": "#e66101", "no verdict": "#b0b0b0"}


def overview_chart_data(overview: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """The chart's rows: one per overview row with an accuracy retained, a row ``label``
    unique within its model, the ``verdict`` (a :data:`CHART_COLORS` key) and the threshold
    in percent."""
    d = overview.dropna(subset=["retained_pct"]).copy()
    finding = d.finding.map(_CHART_FINDING).fillna(d.finding.str.split(" \\(").str[0])
    d["label"] = finding + ": " + d.method.astype(str)
    repeat = d.groupby(["model", "label"], sort=False).cumcount()
    d["label"] = d.label.where(repeat == 0, d.label + " #" + (repeat + 1).astype(str))
    d["value"] = d.retained_pct.astype(float).round(1)
    d["verdict"] = [
        "no verdict" if m is None or pd.isna(m) else "meets" if m else "below"
        for m in d.meets_threshold
    ]
    d["threshold_pct"] = 100.0 * threshold
    return d.reset_index(drop=True)


def overview_chart(overview: pd.DataFrame, threshold: float = 0.95):
    """Accuracy retained (%) of each headline method, one panel per model (its own rows
    only), bars coloured by the verdict (blue: meets the threshold, orange: below, grey: no
    verdict), the threshold as a dashed rule, each value written after its bar (so a zero is
    visible). One data source at the top level, which the facet splits; the x axis reaches
    past the largest value and its label."""
    import altair as alt

    d = overview_chart_data(overview, threshold)
    models = list(dict.fromkeys(d.model))
    top = max(110.0, float(d.value.max()) + 12.0) if len(d) else 110.0
    x_max = 10.0 * math.ceil(top / 10.0)
    pct = f"{100 * threshold:g}%"
    scale = alt.Scale(domain=[0, x_max], nice=False)
    title = "accuracy retained (% of the unpruned model)"
    x = alt.X("value:Q", title=title, stack=None, scale=scale)
    y = alt.Y("label:N", title=None, sort=None, axis=alt.Axis(labelLimit=360))
    color = alt.Color(
        "verdict:N", title=None,
        scale=alt.Scale(domain=list(CHART_COLORS), range=list(CHART_COLORS.values())),
        legend=alt.Legend(labelExpr=f"datum.label == 'meets' ? 'meets {pct}' : "
                                    f"datum.label == 'below' ? 'below {pct}' : datum.label"),
    )  # fmt: skip
    tooltip = ["model", "finding", "method", "result", alt.Tooltip("value:Q", format=".1f"),
               "eval_clips", "verdict"]  # fmt: skip
    bars = alt.Chart().mark_bar(clip=True).encode(x=x, y=y, color=color, tooltip=tooltip)
    text = alt.Chart().mark_text(align="left", dx=3, clip=True).encode(
        x=x, y=y, text=alt.Text("value:Q", format=".1f"))  # fmt: skip
    rule = alt.Chart().mark_rule(strokeDash=[4, 3], color="black").encode(
        x=alt.X("min(threshold_pct):Q", title=title, scale=scale))  # fmt: skip
    header = alt.Header(labelAngle=0, labelAlign="left", labelFontWeight="bold")
    return (
        alt.layer(bars, rule, text, data=d)
        .properties(width=320, height=alt.Step(20))
        .facet(row=alt.Row("model:N", title=None, sort=models, header=header))
        .resolve_scale(y="independent")
        .properties(title=f"accuracy retained per model (dashed: the {pct} threshold)")
    )
