"""The SpeechLLM stage's tables and charts (torch-free): the pruning summary (how many decoder
layers can be removed within the ΔWER threshold, on the point estimate and with confidence),
the block-overlap table (which contiguous block of n decoder layers the angular distance calls
redundant, per SpeechLLM x task x input type x condition, and the Jaccard overlap of those
blocks between pairs labelled by what differs: encoder, decoder, both, task, input, condition
or language), the decoder-similarity heatmaps and the ΔWER curves. The markdown is
:func:`markdown`.

ΔWER is :func:`workflow_scripts.speechllm.metrics.delta_wer`, (WER_n - WER_0) / WER_0. Intervals
come from :func:`bootstrap`: the test *sentences* are resampled with replacement (every
utterance of a drawn sentence comes along), the corpus WER of every state recomputed from the
per-utterance records, ΔWER paired (the same resample for WER_n and WER_0).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from workflow_scripts.pruning.strategies import STRATEGIES
from workflow_scripts.speechllm.healing_report import (
    add_healing_counts,
    healing_bootstrap,
    healing_table,
)
from workflow_scripts.speechllm.intervals import (
    quantile_interval,
    resample_counts,
    resampled_wer,
)
from workflow_scripts.speechllm.metrics import delta_wer

#: What the overlap table compares, in its order (``both`` = encoder and decoder;
#: ``condition``: the paper's Fig. 1 conditions base / frozen / lora; ``condition+input``: text
#: through the base decoder vs speech through a SpeechLLM, its Fig. 1a vs 1b / 1c).
FACTORS = ("encoder", "decoder", "task", "condition", "input", "language")
LABELS = ("encoder", "decoder", "both", "task", "input", "condition", "condition+input",
          "language")  # fmt: skip

#: How every SpeechLLM table numbers decoder layers.
NUMBERING = (
    "Decoder layers are numbered 1..L (`layers`, `removed_layers_*`); columns named `*_index` "
    "hold the 0-based block indices of the code. WER in percent; ΔWER is a ratio."
)
#: The note above each markdown table.
NOTES = {
    "summary": (
        "ΔWER = (WER_n - WER_0) / WER_0. Counts of removable decoder layers: `max_removed` = "
        "the largest n whose point ΔWER is within the threshold (smaller n may fail); "
        "`max_removed_prefix` = the largest n such that every n' <= n is within on the point "
        "estimate; `max_removed_prefix_ci` = the same with the upper end of ΔWER's bootstrap "
        "interval (sentences resampled) within the threshold, i.e. removable with confidence. "
        "`_lo` / `_hi`: the interval's ends. `random`: the mean over its seeds. After LoRA "
        "healing (`speechllm_healing.md`): `wer_control` = the unpruned decoder given the same "
        "healing budget (the n = 0 control); `max_removed_healed_prefix` (`_ci`) = the largest "
        "n such that every n' = 1..n was healed with ΔWER against that control within the "
        "threshold (with confidence: the interval's upper end), per-task adapters; "
        "`max_removed_joint_prefix` (`_ci`): the same for one adapter trained on every task; "
        "empty when n = 1 was not healed; `healed_upto`: the sweep's end (a count equal to it "
        "means at least that many)."
    ),
    "healing": (
        "One row per healed n (random: mean over seeds). `healing`: `task` = an adapter per "
        "task, `joint` = one adapter trained on every task (its removal sets from one task's "
        "scores). `base_wer`: the untrained unpruned model; `control_wer`: the unpruned model "
        "given the same healing budget (steps, batch, learning rate, utterances, seed; "
        "`heal_steps`, `heal_examples`); `wer` / `healed_wer`: the pruned model before / after "
        "healing. Gains in WER points: `wer_gain` = before - after (includes the extra "
        "training), `control_wer_gain` = base - control (the training alone), "
        "`wer_gain_over_control` = their difference. `delta_wer_control` = (WER_healed - "
        "WER_control) / WER_control with its sentence-bootstrap interval; `within_threshold` "
        "(`_ci`: the interval's upper end) within the ΔWER threshold; `delta_wer_base`: "
        "against the untrained model (confounded with the extra training)."
    ),
    "overlap": (
        "Pairs are labelled by what differs between them (encoder, decoder, both = encoder and "
        "decoder, task = transcription vs translation, input = text vs speech, condition = "
        "base (text through the decoder without any adapter) / frozen (a SpeechLLM whose "
        "decoder was kept frozen) / lora (a LoRA-adapted decoder), language = of the speech, "
        "or the translation's target language between two translation tasks; from each "
        "SpeechLLM's config). A base block is the decoder's alone: one row per decoder, no "
        "encoder. Blocks of decoders of "
        "equal depth are compared as layer sets; of unequal depth as intervals of the fraction "
        "of depth (`compared`). `runner_up_margin`: the angular distance of the second-best "
        "block minus the best's (small = a near tie)."
    ),
}


def add_degradation(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The pruning table with ``delta_wer`` = (WER - WER_0) / WER_0, ``within_threshold``
    (ΔWER <= ``threshold``) and ``healed_delta_wer`` of the healed WER."""
    d = df.copy()
    d["delta_wer"] = delta_wer(d.wer.to_numpy(float), d.base_wer.to_numpy(float))
    d["within_threshold"] = d.delta_wer <= threshold
    d["healed_delta_wer"] = delta_wer(d.healed_wer.to_numpy(float), d.base_wer.to_numpy(float))
    return d


def mean_over_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Seeded strategies' rows replaced by their mean over seeds per n (``seed`` null,
    ``removed`` null); other rows unchanged."""
    seeded = df.seed.notna()
    if not seeded.any():
        return df
    keys = ["model", "task", "strategy", "n_removed"]
    num = ["wer", "bleu", "ser", "healed_wer", "healed_bleu", "decoder_params"]
    g = df[seeded].groupby(keys, sort=False)
    mean = g[num].mean().reset_index()
    first = g.first().reset_index().drop(columns=num)
    merged = first.merge(mean, on=keys).assign(seed=pd.NA, removed=None)
    return pd.concat([df[~seeded], merged[df.columns]], ignore_index=True)


# ----------------------------------------------------------------------------------------
# Bootstrap over sentences
# ----------------------------------------------------------------------------------------
def bootstrap(records: pd.DataFrame, resamples: int = 1000, level: float = 0.95,
              seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per SpeechLLM x task x strategy x n x healed: the point WER recomputed from the records
    and the percentile intervals of WER and ΔWER, resampling the cell's test sentence ids with
    replacement (``resamples`` times, ``np.random.default_rng(seed)`` per cell). Seeded
    strategies: the WER of each resample averaged over the seeds, as the summary's mean."""
    rows = []
    for (model, task, strategy), g in records.groupby(["model", "task", "strategy"], sort=False):
        sents = pd.Index(sorted(g.sentence_id.unique()))
        S = len(sents)
        C = resample_counts(S, resamples, seed)
        per_n: dict[tuple[int, bool], list[tuple[np.ndarray, float]]] = {}
        for (n, healed, _sd), h in g.groupby(
            ["n_removed", "healed", "seed"], dropna=False, sort=True
        ):
            per_n.setdefault((int(n), bool(healed)), []).append(resampled_wer(h, sents, C))
        base = per_n.get((0, False))
        if base is None:
            continue
        base_boot = np.mean([b for b, _ in base], axis=0)
        for (n, healed), states in sorted(per_n.items()):
            boot = np.mean([b for b, _ in states], axis=0)
            lo, hi = quantile_interval(boot, level)
            dlo, dhi = quantile_interval(delta_wer(boot, base_boot), level)
            rows.append({"model": model, "task": task, "strategy": strategy, "n_removed": n,
                         "healed": healed, "wer_records": float(np.mean([p for _, p in states])),
                         "wer_lo": lo, "wer_hi": hi, "delta_wer_lo": dlo, "delta_wer_hi": dhi,
                         "sentences": S})  # fmt: skip
    return pd.DataFrame(rows)


def _prefix(ok: np.ndarray, n: np.ndarray) -> int:
    """The largest n such that every n' <= n is ok (``ok`` sorted by n; n = 0 is ok)."""
    return int(n[np.cumprod(ok).astype(bool)].max())


def summary_table(df: pd.DataFrame, threshold: float,
                  intervals: pd.DataFrame | None = None) -> pd.DataFrame:  # fmt: skip
    """Per SpeechLLM, task and strategy (random: mean over seeds): the unpruned WER (and its
    interval) and BLEU, the removable counts of :data:`NOTES` (``max_removed``,
    ``max_removed_prefix``, ``max_removed_prefix_ci``), ΔWER at the prefix count with its
    interval, the removed blocks at ``max_removed``, and the healed WER at each healed n.
    ``intervals`` is :func:`bootstrap`'s table (without it the interval columns are null and
    ``max_removed_prefix_ci`` is null)."""
    d = add_degradation(mean_over_seeds(df), threshold)
    iv = intervals[~intervals.healed] if intervals is not None and len(intervals) else None
    cols = ["wer_lo", "wer_hi", "delta_wer_lo", "delta_wer_hi"]
    if iv is not None:
        d = d.merge(iv[["model", "task", "strategy", "n_removed", *cols]],
                    on=["model", "task", "strategy", "n_removed"], how="left")  # fmt: skip
    else:
        d = d.assign(**{c: np.nan for c in cols})
    out = []
    for (model, task, strategy), g in d.groupby(["model", "task", "strategy"], sort=False):
        g = g.sort_values("n_removed")
        n = g.n_removed.to_numpy(int)
        ok = g.within_threshold.to_numpy(bool) | (n == 0)
        best, prefix = int(n[ok].max()), _prefix(ok, n)
        ok_ci = (g.delta_wer_hi.to_numpy(float) <= threshold) | (n == 0)
        prefix_ci = _prefix(ok_ci, n) if g.delta_wer_hi.notna().any() else None
        at, base = g[g.n_removed == best].iloc[0], g[g.n_removed == 0].iloc[0]
        at_p = g[g.n_removed == prefix].iloc[0]
        healed = g[g.healed.astype(bool)]
        out.append({
            "model": model, "task": task, "strategy": strategy, "n_layers": int(at.n_layers),
            "base_wer": float(at.base_wer), "base_wer_lo": float(base.wer_lo),
            "base_wer_hi": float(base.wer_hi), "base_bleu": float(at.base_bleu),
            "threshold": threshold, "max_removed": best,
            "max_removed_fraction": best / int(at.n_layers), "max_removed_prefix": prefix,
            "max_removed_prefix_ci": prefix_ci,
            "delta_wer_at_prefix": float(at_p.delta_wer),
            "delta_wer_at_prefix_lo": float(at_p.delta_wer_lo),
            "delta_wer_at_prefix_hi": float(at_p.delta_wer_hi),
            "wer_at_max": float(at.wer), "removed_at_max": at.removed,
            "removed_at_prefix": at_p.removed,
            "healed_n": ",".join(map(str, healed.n_removed)) or None,
            "wer_before_heal": ",".join(f"{w:.4f}" for w in healed.wer) or None,
            "wer_after_heal": ",".join(f"{w:.4f}" for w in healed.healed_wer) or None,
        })  # fmt: skip
    res = pd.DataFrame(out)
    if res.empty:
        return res
    res["max_removed_prefix_ci"] = res.max_removed_prefix_ci.astype("Int64")
    order = {s: i for i, s in enumerate(STRATEGIES)}
    res["_o"] = res.strategy.map(order)
    return res.sort_values(["model", "task", "_o"]).drop(columns="_o").reset_index(drop=True)


# ----------------------------------------------------------------------------------------
# Redundant blocks and their overlap
# ----------------------------------------------------------------------------------------
def redundant_blocks(sim: pd.DataFrame) -> pd.DataFrame:
    """Per SpeechLLM, task, input type, condition and n: the contiguous block l*..l*+n-1 with
    the smallest angular distance d(h_l*, h_l*+n) (lowest l* on ties), i.e. what
    ``angular_block`` removes, the runner-up margin (second-smallest distance minus the
    smallest; null with one candidate) and the SpeechLLM's factors (``encoder``, ``decoder``,
    ``language`` of the speech, ``condition`` of the cells; the model's name, "", "en" and ""
    when a cell lacks them) with the task's ``kind`` (asr / st) and ``target`` language. A base
    block (text through the decoder alone) is its decoder's: one row per decoder, named by it
    (SpeechLLMs sharing a decoder measure the same thing)."""
    from workflow_scripts.speechllm.text import TASK_LANGUAGE, task_kind

    a = sim[sim.metric == "angular"]
    if "condition" not in a:
        a = a.assign(condition="")
    rows = []
    keys = ["model", "task", "input", "condition", "n"]
    for (model, task, inp, cond, n), g in a.groupby(keys, sort=False):
        g = g.sort_values("layer")
        v = g.value.to_numpy(float)
        best = g.iloc[int(np.argmin(v))]
        start = int(best.layer)
        margin = float(np.sort(v)[1] - np.sort(v)[0]) if len(v) > 1 else np.nan
        language = str(best.get("language", "en"))
        decoder = str(best.get("decoder", ""))
        base = cond == "base"
        rows.append({"model": (decoder or model) if base else model, "task": task,
                     "input": inp, "condition": cond, "n": int(n), "start": start,
                     "blocks": list(range(start, start + int(n))), "distance": float(best.value),
                     "runner_up_margin": margin, "n_layers": int(best.n_layers),
                     "encoder": "" if base else str(best.get("encoder", model)),
                     "decoder": decoder, "language": language, "kind": task_kind(task),
                     "target": TASK_LANGUAGE.get(task, language)})  # fmt: skip
    out = pd.DataFrame(rows)
    if len(out):
        same = ["model", "task", "input", "condition", "n", "decoder", "language"]
        out = out.drop_duplicates(same).reset_index(drop=True)
    return out


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def _interval_jaccard(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 1.0


def _differs(x: dict, y: dict, factor: str) -> bool:
    """Whether two block choices differ in ``factor``: ``task`` compares the kinds
    (transcription / translation), ``language`` the speech languages and, between two
    translations, the target languages; ``encoder`` only when both have one (a base block has
    none); a factor a row lacks does not differ."""
    if factor == "task":
        return x.get("kind", x["task"]) != y.get("kind", y["task"])
    if factor == "language":
        same_kind = x.get("kind", x["task"]) == y.get("kind", y["task"])
        target = same_kind and x.get("target", "") != y.get("target", "")
        return x.get("language", "en") != y.get("language", "en") or target
    if factor == "encoder" and not (x.get("encoder") and y.get("encoder")):
        return False
    return x.get(factor, "") != y.get(factor, "")


def pair_label(x: dict, y: dict) -> str:
    """What differs between two block choices, from :data:`FACTORS` (:func:`_differs`): one
    factor's name, ``both`` for encoder and decoder together, ``+``-joined otherwise, ``none``
    when nothing does (e.g. two SpeechLLMs of the same parts trained differently)."""
    diff = [k for k in FACTORS if _differs(x, y, k)]
    if diff == ["encoder", "decoder"]:
        return "both"
    return "+".join(diff) or "none"


def _choice(r: dict) -> str:
    """A block choice's name in the pairs table: SpeechLLM (or decoder) / task / input, and the
    condition when known."""
    return "/".join(str(v) for v in (r["model"], r["task"], r["input"], r.get("condition")) if v)


def overlap_pairs(blocks: pd.DataFrame) -> pd.DataFrame:
    """Every pair of (SpeechLLM, task, input) block choices at the same n, labelled by
    :func:`pair_label`, with the overlap of their blocks: the Jaccard index of the layer sets
    when both decoders have the same depth (``compared = layers``), else of the blocks as
    intervals of the fraction of depth [l*/L, (l*+n)/L) (``compared = fraction of depth``)."""
    rows = []
    for n, g in blocks.groupby("n", sort=True):
        for x, y in itertools.combinations(g.to_dict("records"), 2):
            if _choice(x) == _choice(y):
                continue
            same = x["n_layers"] == y["n_layers"]
            if same:
                j = _jaccard(x["blocks"], y["blocks"])
            else:
                fx = (x["start"] / x["n_layers"], (x["start"] + n) / x["n_layers"])
                fy = (y["start"] / y["n_layers"], (y["start"] + n) / y["n_layers"])
                j = _interval_jaccard(fx, fy)
            rows.append({"n": int(n), "factor": pair_label(x, y),
                         "a": _choice(x), "b": _choice(y),
                         "blocks_a": x["blocks"], "blocks_b": y["blocks"],
                         "depth_a": x["n_layers"], "depth_b": y["n_layers"],
                         "compared": "layers" if same else "fraction of depth",
                         "jaccard": j})  # fmt: skip
    return pd.DataFrame(rows)


def overlap_table(blocks: pd.DataFrame, n: int) -> pd.DataFrame:
    """The headline table at ``n``: one row per SpeechLLM x task x input type with its
    redundant block and runner-up margin, plus one row per label of :data:`LABELS` that has
    pairs (those differing in that one factor, or in encoder and decoder for ``both``) with
    the mean Jaccard overlap, the share of identical choices and how the blocks were
    compared."""
    at = blocks[blocks.n == n]
    rows = [{"model": r.model, "task": r.task, "input": r.input,
             "condition": getattr(r, "condition", ""), "encoder": r.encoder,
             "decoder": r.decoder, "n": n, "blocks": r.blocks, "distance": r.distance,
             "runner_up_margin": r.runner_up_margin} for r in at.itertuples()]  # fmt: skip
    pairs = overlap_pairs(at)
    for label in LABELS:
        p = pairs[pairs.factor == label] if len(pairs) else pairs
        if len(p):
            rows.append({"model": f"across {label}", "task": "", "input": "", "n": n,
                         "mean_jaccard": float(p.jaccard.mean()),
                         "identical_share": float((p.jaccard == 1.0).mean()),
                         "pairs": len(p),
                         "compared": ", ".join(sorted(set(p.compared)))})  # fmt: skip
    return pd.DataFrame(rows)


def _heal_pct(v) -> str | None:
    """'0.3000,0.2500' (WERs as fractions) as '30.0,25.0' (percent)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return ",".join(f"{100 * float(w):.1f}" for w in str(v).split(","))


def display(name: str, table: pd.DataFrame) -> pd.DataFrame:
    """A table as people read it (its CSV and markdown): WERs in percent (``_pct``), decoder
    layers numbered 1..L (``removed_layers_at_*``, ``layers``, ``layers_a`` / ``layers_b``;
    the 0-based block indices in ``*_index`` columns), the ΔWER threshold named as such (a
    ratio), the removable share in % of the decoder's layers."""
    from workflow_scripts.core.tables import layer_numbers, layer_text, percent_columns

    d = table.copy()
    for col in [c for c in d.columns if str(c).startswith("removed_at_")]:
        at = str(col).removeprefix("removed_at_")
        idx = d.pop(col)
        d[f"removed_layers_at_{at}"] = [layer_text(i) for i in idx]
        d[f"removed_index_at_{at}"] = [None if i is None else list(map(int, i)) for i in idx]
    for col, new in (("blocks", "layers"), ("blocks_a", "layers_a"), ("blocks_b", "layers_b")):
        if col in d:
            idx = d.pop(col)
            d[new] = [layer_numbers(i) if isinstance(i, list | tuple | np.ndarray) else None
                      for i in idx]  # fmt: skip
    for col in ("wer_before_heal", "wer_after_heal"):
        if col in d:
            d[f"{col}_pct"] = [_heal_pct(v) for v in d.pop(col)]
    d = d.rename(columns={"threshold": "delta_wer_threshold"})
    return percent_columns(d, None).pipe(
        percent_columns, ["max_removed_fraction"], {"max_removed_fraction": "max_removed_pct"}
    )


def markdown(name: str, table: pd.DataFrame) -> str:
    """A table's markdown (:func:`display`) with its note (:data:`NOTES`) and the numbering
    (:data:`NUMBERING`) above it."""
    from workflow_scripts.core.tables import markdown_table

    note = NOTES.get(name)
    return (
        (f"{note}\n\n" if note else "") + f"{NUMBERING}\n\n" + markdown_table(display(name, table))
    )


# ----------------------------------------------------------------------------------------
# Charts
# ----------------------------------------------------------------------------------------
def similarity_heatmaps(sim: pd.DataFrame):
    """Angular distance d(h_l, h_l+n) as a heatmap of layer l (x) vs n (y), one panel per
    SpeechLLM (rows) and task / input type / condition (columns), as the paper's Figure 1."""
    import altair as alt

    d = sim[sim.metric == "angular"].copy()
    d["panel"] = d.task + " / " + d.input
    if "condition" in d:  # text through the LoRA decoder and through the base decoder apart
        d["panel"] += " / " + d.condition.fillna("").astype(str)
    return (
        alt.Chart(d)
        .mark_rect()
        .encode(
            x=alt.X("layer:O", title="layer l"),
            y=alt.Y("n:O", title="n", sort="descending"),
            color=alt.Color(
                "value:Q", scale=alt.Scale(scheme="viridis", reverse=True), title="d(l, l+n)"
            ),  # fmt: skip
            tooltip=["model", "panel", "layer", "n", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=140, height=140)
        .facet(row=alt.Row("model:N"), column=alt.Column("panel:N", title=None))
    )


def delta_wer_chart(df: pd.DataFrame, threshold: float):
    """ΔWER = (WER_n - WER_0) / WER_0 vs the share of decoder layers removed (%), one line per
    strategy (random: mean over seeds), panels = SpeechLLM (rows) x task (columns); the dashed
    rule is the threshold, triangles are healed models (an infinite ΔWER is not drawn). WER in
    the tooltip in percent; ΔWER is a ratio and stays one."""
    import altair as alt

    d = add_degradation(mean_over_seeds(df), threshold)
    d = d[["model", "task", "strategy", "fraction_removed", "n_removed", "wer",
           "delta_wer", "healed", "healed_delta_wer"]]  # fmt: skip
    d = d.replace([np.inf, -np.inf], np.nan)
    d["layers_removed_pct"] = 100.0 * d.pop("fraction_removed").astype(float)
    d["wer_pct"] = 100.0 * d.pop("wer").astype(float)
    base = alt.Chart().encode(x=alt.X("layers_removed_pct:Q", title="decoder layers removed (%)"))
    lines = base.mark_line(point=True).encode(
        y=alt.Y("delta_wer:Q", title="ΔWER"),
        color="strategy:N",
        tooltip=["strategy", "n_removed",
                 alt.Tooltip("wer_pct:Q", title="WER (%)", format=".1f")],
    )  # fmt: skip
    healed = base.mark_point(shape="triangle-up", size=80, filled=True).encode(
        y="healed_delta_wer:Q", color="strategy:N",
    ).transform_filter(alt.datum.healed)  # fmt: skip
    rule = (
        alt.Chart()
        .mark_rule(strokeDash=[4, 4], color="grey")
        .encode(y="t:Q")
        .transform_calculate(t=str(threshold))
    )
    title = alt.TitleParams(
        "ΔWER = (WER_n - WER_0) / WER_0 after removing decoder layers",
        subtitle=[
            f"dashed: the threshold {threshold:g}; triangles: after LoRA healing "
            "(against the unhealed WER_0)"
        ],  # fmt: skip
        anchor="start",
    )
    return (
        alt.layer(lines, healed, rule, data=d)
        .properties(width=220, height=180)
        .facet(row=alt.Row("model:N"), column=alt.Column("task:N"))
        .properties(title=title)
    )


# ----------------------------------------------------------------------------------------
# Everything the tables rule writes
# ----------------------------------------------------------------------------------------
def build_tables(sim: pd.DataFrame, pruning: pd.DataFrame, records: pd.DataFrame,
                 threshold: float, bootstrap_cfg: dict, overlap_n: int,
                 heal: pd.DataFrame | None = None,
                 heal_records: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:  # fmt: skip
    """The pruning ``summary`` (intervals from the ``records``, :func:`bootstrap` with
    ``bootstrap_cfg``: resamples, level, seed; the counts after healing,
    :func:`add_healing_counts`), the ``healing`` table (:func:`healing_table` against the
    healing cells' control ``heal``, intervals from :func:`healing_bootstrap`), the
    block-``overlap`` table at ``overlap_n`` and every overlap pair (``pairs``, all n) of the
    stacked cells."""
    blocks = redundant_blocks(sim) if len(sim) else pd.DataFrame()
    iv = bootstrap(records, **bootstrap_cfg) if len(records) else None
    heal = pd.DataFrame() if heal is None else heal
    heal_records = pd.DataFrame() if heal_records is None else heal_records
    healing = pd.DataFrame()
    if len(pruning) and (pruning.healed.astype(bool).any() or len(heal)):
        hiv = healing_bootstrap(records, heal_records, **bootstrap_cfg) if len(records) else None
        healing = healing_table(pruning, heal, threshold, hiv)
    summary = summary_table(pruning, threshold, iv) if len(pruning) else pd.DataFrame()
    return {
        "summary": add_healing_counts(summary, healing),
        "healing": healing,
        "overlap": overlap_table(blocks, overlap_n) if len(blocks) else pd.DataFrame(),
        "pairs": overlap_pairs(blocks) if len(blocks) else pd.DataFrame(),
    }


def charts(sim: pd.DataFrame, pruning: pd.DataFrame, threshold: float) -> dict:
    """The decoder-similarity heatmaps and the ΔWER curves (role -> altair chart)."""
    return {"similarity": similarity_heatmaps(sim),
            "delta_wer": delta_wer_chart(pruning, threshold)}  # fmt: skip
