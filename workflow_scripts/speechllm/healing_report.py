"""The SpeechLLM stage's healing tables (torch-free): every LoRA-healed model against its
healed n = 0 control (the unpruned decoder given the same budget), with sentence-bootstrap
intervals (:mod:`.intervals`), and the "removable after healing" counts added to the pruning
summary. :func:`workflow_scripts.speechllm.report.build_tables` writes them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.pruning.strategies import STRATEGIES
from workflow_scripts.speechllm.intervals import (
    quantile_interval,
    resample_counts,
    resampled_wer,
)
from workflow_scripts.speechllm.metrics import delta_wer

#: The budget columns a healed row records (:func:`workflow_scripts.speechllm.heal.budget`);
#: every healed model and its control must agree on them.
BUDGET = ("heal_steps", "heal_batch_size", "heal_lr", "heal_utterances", "heal_seed", "heal_r")
_HKEYS = ["model", "task", "strategy", "healing", "n_removed"]


def _healed_records(records: pd.DataFrame, heal_records: pd.DataFrame) -> pd.DataFrame:
    """Every healed state's records with ``healing``: the pruning cells' healed states
    (``task``: healed on the cell's task) and the healing cells' (control, joint)."""
    own = records[records.healed.astype(bool)].assign(healing="task")
    other = heal_records[heal_records.healed.astype(bool)] if len(heal_records) else heal_records
    return pd.concat([own, other], ignore_index=True) if len(other) else own


def healing_bootstrap(records: pd.DataFrame, heal_records: pd.DataFrame, resamples: int = 1000,
                      level: float = 0.95, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per SpeechLLM x task x strategy x healing (``task`` / ``joint``) x healed n: the healed
    WER recomputed from the records (seeded strategies: the mean over seeds) with its interval,
    and the intervals of ΔWER against the healed n = 0 control of the same healing
    (``delta_wer_control_*``) and against the untrained unpruned model (``delta_wer_base_*``).
    The test sentences are resampled as in
    :func:`workflow_scripts.speechllm.report.bootstrap` (the same draws: the same seed
    and sentences), one resample for every state of a SpeechLLM x task, so both ΔWERs are
    paired."""
    healed = _healed_records(records, heal_records)
    rows = []
    for (model, task), g in records.groupby(["model", "task"], sort=False):
        sents = pd.Index(sorted(g.sentence_id.unique()))
        C = resample_counts(len(sents), resamples, seed)
        first = g[~g.healed.astype(bool) & (g.n_removed == 0)]
        first = first[first.strategy == first.strategy.iloc[0]]
        seeds = first.groupby("seed", dropna=False)
        base = np.mean([resampled_wer(x, sents, C)[0] for _, x in seeds], axis=0)
        h = healed[(healed.model == model) & (healed.task == task)]
        controls = {mode: resampled_wer(c, sents, C) for mode, c in
                    h[h.strategy == "control"].groupby("healing")}  # fmt: skip
        for (strategy, mode, n), st in h[h.strategy != "control"].groupby(
            ["strategy", "healing", "n_removed"], sort=True
        ):
            states = [resampled_wer(x, sents, C) for _, x in st.groupby("seed", dropna=False)]
            b = np.mean([x for x, _ in states], axis=0)
            lo, hi = quantile_interval(b, level)
            point = float(np.mean([p for _, p in states]))
            row = {"model": model, "task": task, "strategy": strategy, "healing": mode,
                   "n_removed": int(n), "healed_wer_records": point, "healed_wer_lo": lo,
                   "healed_wer_hi": hi}  # fmt: skip
            row["delta_wer_base_lo"], row["delta_wer_base_hi"] = quantile_interval(
                delta_wer(b, base), level
            )
            if mode in controls:
                cb, cp = controls[mode]
                row["control_wer_records"] = float(cp)
                row["delta_wer_control_lo"], row["delta_wer_control_hi"] = quantile_interval(
                    delta_wer(b, cb), level
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _check_budgets(healed: pd.DataFrame, control: pd.DataFrame) -> None:
    """Every healed model was given its control's budget (:data:`BUDGET`), or an error naming
    the first that was not: a healing gain is only a gain over the control when both had the
    same training."""
    for model, c in control.groupby("model"):
        want = c[list(BUDGET)].drop_duplicates()
        if len(want) != 1:
            raise ValueError(f"{model}: the controls differ in their budgets:\n{want}")
        got = healed[healed.model == model]
        if not set(BUDGET) <= set(got.columns) or got[list(BUDGET)].isna().any().any():
            raise ValueError(f"{model}: healed rows without a recorded budget (cells older "
                             "than the control; rerun them)")  # fmt: skip
        bad = got[(got[list(BUDGET)] != want.iloc[0]).any(axis=1)]
        if len(bad):
            r = bad.iloc[0]
            raise ValueError(f"{model} / {r.task} / {r.strategy} n = {r.n_removed}: healing "
                             f"budget {r[list(BUDGET)].to_dict()} differs from the control's "
                             f"{want.iloc[0].to_dict()}")  # fmt: skip


def _mean_healed(d: pd.DataFrame) -> pd.DataFrame:
    """Healed rows per SpeechLLM x task x strategy x healing x n, seeded strategies averaged
    over their seeds (``removed`` null then)."""
    num = ["wer", "healed_wer", "healed_bleu"]
    g = d.groupby(_HKEYS, sort=False)
    out = g.first().reset_index().drop(columns=num).merge(g[num].mean().reset_index(), on=_HKEYS)
    seeds = g.seed.nunique().reset_index(name="_seeds")
    out = out.merge(seeds, on=_HKEYS)
    out.loc[out._seeds > 1, "removed"] = None
    return out.drop(columns="_seeds")


def healing_table(pruning: pd.DataFrame, heal: pd.DataFrame, threshold: float,
                  intervals: pd.DataFrame | None = None) -> pd.DataFrame:  # fmt: skip
    """One row per SpeechLLM x task x strategy x healing (``task``: an adapter per task, in
    the pruning cells; ``joint``: one adapter for every task) x healed n (random: mean over
    seeds): the untrained unpruned WER (``base_wer``), the healed n = 0 control's
    (``control_wer``: the same healing budget without pruning), the pruned WER before and after
    healing, the WER gains (``wer_gain`` = before - after: confounded with extra training;
    ``control_wer_gain`` = base - control: what the training alone gives;
    ``wer_gain_over_control`` = the difference) and ΔWER of the healed model against the
    control (``delta_wer_control``, with its interval, and ``within_threshold`` /
    ``within_threshold_ci`` on the point estimate and the interval's upper end) and against the
    untrained model (``delta_wer_base``). ``heal`` is the healing cells' table; without its
    control rows the control columns are null. The budgets must agree (:func:`_check_budgets`)."""
    own = pruning[pruning.healed.astype(bool)].assign(healing="task")
    parts = [own] + ([heal[heal.strategy != "control"]] if len(heal) else [])
    healed = pd.concat(parts, ignore_index=True)
    if healed.empty:
        return pd.DataFrame()
    control = heal[heal.strategy == "control"] if len(heal) else pd.DataFrame()
    if len(control):
        _check_budgets(healed, control)
    d = _mean_healed(healed)
    base = pruning[pruning.n_removed == 0].groupby(["model", "task"]).wer.mean()
    d["base_wer"] = [base.get((m, t), np.nan) for m, t in zip(d.model, d.task, strict=True)]
    ctrl = control.set_index(["model", "task", "healing"]).healed_wer if len(control) else {}
    d["control_wer"] = [ctrl.get((m, t, h), np.nan) if len(control) else np.nan
                        for m, t, h in zip(d.model, d.task, d.healing, strict=True)]  # fmt: skip
    d["wer_gain"] = d.wer - d.healed_wer
    d["control_wer_gain"] = d.base_wer - d.control_wer
    d["wer_gain_over_control"] = d.wer_gain - d.control_wer_gain
    d["delta_wer_base"] = delta_wer(d.healed_wer.to_numpy(float), d.base_wer.to_numpy(float))
    d["delta_wer_control"] = delta_wer(d.healed_wer.to_numpy(float),
                                       d.control_wer.to_numpy(float))  # fmt: skip
    cols = ["healed_wer_lo", "healed_wer_hi", "delta_wer_control_lo", "delta_wer_control_hi"]
    if intervals is not None and len(intervals):
        iv = intervals.reindex(columns=[*_HKEYS, *cols])
        d = d.merge(iv, on=_HKEYS, how="left")
    else:
        d = d.assign(**{c: np.nan for c in cols})
    d["within_threshold"] = d.delta_wer_control <= threshold
    d["within_threshold_ci"] = d.delta_wer_control_hi <= threshold
    d["threshold"] = threshold
    d = d.rename(columns={"removed": "removed_at_n"})
    order = {s: i for i, s in enumerate(STRATEGIES)}
    d = d.assign(_o=d.strategy.map(order)).sort_values(["model", "task", "_o", "healing",
                                                         "n_removed"])  # fmt: skip
    keep = ["model", "task", "strategy", "healing", "n_removed", "n_layers", "removed_at_n",
            "base_wer", "control_wer", "wer", "healed_wer", "healed_wer_lo", "healed_wer_hi",
            "wer_gain", "control_wer_gain", "wer_gain_over_control", "delta_wer_base",
            "delta_wer_control", "delta_wer_control_lo", "delta_wer_control_hi", "threshold",
            "within_threshold", "within_threshold_ci", "heal_steps", "heal_examples"]  # fmt: skip
    return d.reindex(columns=keep).reset_index(drop=True)


def healed_prefix(n: np.ndarray, ok: np.ndarray) -> int | None:
    """Removable after healing: the largest n such that every n' = 1..n was healed and ok
    (n = 0, the control, always is); None when n = 1 was not healed (the count is then not
    measured: an n' left out of the sweep is never counted as removable)."""
    ok_at = {int(k): bool(v) for k, v in zip(n, ok, strict=True)}
    if 1 not in ok_at:
        return None
    k = 0
    while ok_at.get(k + 1, False):
        k += 1
    return k


def add_healing_counts(summary: pd.DataFrame, healing: pd.DataFrame) -> pd.DataFrame:
    """The summary with the per-task control's WER (``wer_control``) and the counts of decoder
    layers removable after healing, on the point estimate and with confidence (ΔWER against the
    control within the threshold for every n' <= n, :func:`healed_prefix`), for the per-task
    adapters (``max_removed_healed_prefix``, ``_ci``) and the joint one
    (``max_removed_joint_prefix``, ``_ci``), and ``healed_upto``: the largest n such that
    every n' = 1..n was healed (a count equal to it means at least that many)."""
    cols = ["wer_control", "healed_upto", "max_removed_healed_prefix",
            "max_removed_healed_prefix_ci", "max_removed_joint_prefix",
            "max_removed_joint_prefix_ci"]  # fmt: skip
    out = summary.copy()
    if out.empty:
        return out
    vals: dict[str, list] = {c: [] for c in cols}
    for r in out.itertuples():
        h = healing[(healing.model == r.model) & (healing.task == r.task)
                    & (healing.strategy == r.strategy)] if len(healing) else healing  # fmt: skip
        per = {}
        for mode in ("task", "joint"):
            m = h[h.healing == mode] if len(h) else h
            n = m.n_removed.to_numpy(int) if len(m) else np.array([], int)
            per[mode] = (
                healed_prefix(n, m.within_threshold.fillna(False).to_numpy(bool))
                if len(m) else None,
                healed_prefix(n, m.within_threshold_ci.fillna(False).to_numpy(bool))
                if len(m) and m.delta_wer_control_hi.notna().any() else None,
            )  # fmt: skip
        t = h[h.healing == "task"] if len(h) else h
        vals["wer_control"].append(float(t.control_wer.iloc[0]) if len(t) else np.nan)
        upto = healed_prefix(t.n_removed.to_numpy(int), np.ones(len(t), bool)) if len(t) else None
        vals["healed_upto"].append(upto)
        vals["max_removed_healed_prefix"].append(per["task"][0])
        vals["max_removed_healed_prefix_ci"].append(per["task"][1])
        vals["max_removed_joint_prefix"].append(per["joint"][0])
        vals["max_removed_joint_prefix_ci"].append(per["joint"][1])
    for c in cols:
        out[c] = vals[c] if c == "wer_control" else pd.array(vals[c], dtype="Int64")
    return out
