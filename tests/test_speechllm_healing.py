"""Healing that is not confounded (issue #28): the healed n = 0 control gets the healed runs'
budget, removable-after-healing follows the prefix rule (point estimate and with confidence),
joint healing trains one adapter that serves every task, and the healing cells' records hold
the healed hypotheses every WER and BLEU is recomputed from."""

from __future__ import annotations

import copy

import jiwer
import numpy as np
import pandas as pd
import pytest
import sacrebleu

from workflow_scripts.core.config import ConfigError
from workflow_scripts.speechllm import healing_report, plan, report
from workflow_scripts.speechllm.text import normalize


def _config(**heal):
    from test_speechllm_cells import SECTION, config

    section = copy.deepcopy(SECTION)
    section["pruning"]["heal"].update(heal)
    return config(section, outputs=["speechllm"])


# ----------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------
def test_healing_cells_their_slices_and_inputs():
    cfg = _config()
    assert plan.heal_cells(cfg) == [{"sllm": "a", "healing": "control"},
                                    {"sllm": "b", "healing": "control"}]  # fmt: skip
    control = plan.heal_slice(cfg, healing="control")
    pruning = plan.cell_slice(cfg, task="asr", strategy="backward")
    # the control's budget is the pruning cells' healing settings without n (listing another
    # n reruns no control), and the joint switch is not the pruning cells' (turning it on
    # reruns no pruning cell)
    assert control["heal"] == {k: v for k, v in pruning["heal"].items() if k != "n"}
    assert "joint" not in pruning["heal"] and control["tasks"] == ["asr", "st"]
    assert plan.heal_slice(_config(n=[1, 2]), healing="control") == control
    assert set(plan.heal_inputs(cfg, sllm="a", healing="control")) == {"model", "testing_features",
        "testing_speech", "training_features", "training_speech"}  # fmt: skip
    joint = _config(joint=True, joint_removal_task="st")
    names = [c["healing"] for c in plan.heal_cells(joint) if c["sllm"] == "a"]
    assert names == ["control", "joint-backward", "joint-angular_block", "joint-random"]
    s = plan.heal_slice(joint, healing="joint-random")
    assert s["strategy"] == "random" and s["removal_task"] == "st" and s["heal"]["n"] == [1]
    inp = plan.heal_inputs(joint, sllm="a", healing="joint-random")
    assert inp["pruning"] == plan.cell_path(sllm="a", task="st", strategy="random")
    assert plan.wildcard_constraints(joint)["healing"].startswith("control|joint\\-")
    assert plan.cell_slice(joint, task="asr", strategy="backward") == pruning
    targets = plan.targets(joint)
    assert plan.heal_records_path(sllm="b", healing="joint-backward") in targets
    assert _config(n=[]) and plan.heal_cells(_config(n=[])) == []


def test_heal_strategies_heal_only_the_listed_strategies_cells():
    """``heal.strategies`` limits healing (and its training inputs, and the joint cells) to
    the listed strategies; the healed cells' slices are those of healing every strategy, so
    listing a strategy reruns no other cell; an unlisted name is a config error."""
    every, some = _config(joint=True), _config(joint=True, strategies=["angular_block"])
    assert plan.healed_strategies(every) == ["backward", "angular_block", "random"]
    assert plan.healed_strategies(some) == ["angular_block"]
    assert plan.healed_strategies(_config(n=[], strategies=["random"])) == []
    for strategy in ("backward", "angular_block", "random"):
        healed = strategy == "angular_block"
        cell = plan.cell_slice(some, task="asr", strategy=strategy)
        assert (cell["heal"] is not None) == healed
        if healed:
            assert cell == plan.cell_slice(every, task="asr", strategy=strategy)
        inputs = plan.cell_inputs(some, sllm="a", task="asr", strategy=strategy)
        assert ("training_features" in inputs) == healed
    assert [c["healing"] for c in plan.heal_cells(some) if c["sllm"] == "a"] == [
        "control", "joint-angular_block"]  # fmt: skip
    assert plan.heal_slice(some, healing="control") == plan.heal_slice(every, healing="control")
    with pytest.raises(ConfigError) as err:
        _config(strategies=["angular_block", "forward"])
    assert "heal.strategies: ['forward'] are not in" in str(err.value)


def test_joint_healing_needs_two_tasks_and_a_configured_removal_task():
    from test_speechllm_cells import SECTION, config

    section = copy.deepcopy(SECTION)
    section["pruning"]["heal"].update(joint=True, joint_removal_task="mt")
    section["tasks"] = ["asr"]
    with pytest.raises(ConfigError) as err:
        config(section)
    msg = str(err.value)
    assert "heal.joint: joint healing needs two or more" in msg
    assert "heal.joint_removal_task: 'mt'" in msg


# ----------------------------------------------------------------------------------------
# Cells on a tiny SpeechLLM
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 4-layer SpeechLLM (both tasks), its training and test features, and its backward
    pruning cell for ASR healed at n = 1, 2 (the budget: 3 steps of 3)."""
    from test_speechllm import speech_world

    tmp = tmp_path_factory.mktemp("healing")
    data = speech_world(tmp, {"training": 6, "testing": 4})
    cfg = _config(n=[1, 2], steps=3, batch_size=3, joint=True)
    return {"dir": str(tmp / "sllm"), "data": data, "cfg": cfg, "tmp": tmp}


def _decoding(cell: dict) -> dict:
    return {**cell, "max_new_tokens": 4}  # hypotheses about as long as the references


class FitCalls:
    """Every call of the healing's training loop: its spec, data, tasks and decoder depth."""

    def __init__(self, monkeypatch):
        from workflow_scripts.speechllm import heal as heal_module
        from workflow_scripts.speechllm.model import decoder_layers

        self.calls: list[dict] = []
        real = heal_module.fit

        def fit(model, feats, texts, spec, log=print):
            self.calls.append({"spec": dict(spec), "texts": list(texts),
                               "feats": [feats[i].clone() for i in range(len(feats))],
                               "tasks": list(model.prompts),
                               "layers": len(decoder_layers(model.decoder))})  # fmt: skip
            return real(model, feats, texts, spec, log)

        monkeypatch.setattr(heal_module, "fit", fit)


def _pruning(tiny, strategy="backward", task="asr"):
    from workflow_scripts.speechllm.run import pruning_cell

    cell = _decoding(plan.cell_slice(tiny["cfg"], task=task, strategy=strategy))
    return pruning_cell(cell, sllm="m", task=task, strategy=strategy, model_dir=tiny["dir"],
                        test=tiny["data"]["testing"], calibration=None,
                        train=tiny["data"]["training"])  # fmt: skip


def _heal(tiny, healing, pruning=None):
    from workflow_scripts.speechllm.healing import heal_cell

    cell = _decoding(plan.heal_slice(tiny["cfg"], healing=healing))
    return heal_cell(cell, sllm="m", healing=healing, model_dir=tiny["dir"],
                     test=tiny["data"]["testing"], train=tiny["data"]["training"],
                     pruning=pruning)  # fmt: skip


@pytest.fixture(scope="module")
def cells(tiny):
    """The ASR backward pruning cell, the control and the joint backward cell of ``tiny``, and
    every call of the training loop each made."""
    out = {}
    path = tiny["tmp"] / "asr-backward.parquet"
    for name in ("pruning", "control", "joint"):
        with pytest.MonkeyPatch.context() as mp:
            calls = FitCalls(mp)
            if name == "pruning":
                out[name] = _pruning(tiny)
                out[name][0].to_parquet(path)
            elif name == "control":
                out[name] = _heal(tiny, "control")
            else:
                out[name] = _heal(tiny, "joint-backward", str(path))
        out[f"{name}_calls"] = calls.calls
    return out


def test_the_control_gets_the_budget_of_the_healed_runs(cells):
    pruned, control = cells["pruning_calls"], cells["control_calls"]
    assert [c["layers"] for c in pruned] == [3, 2]  # n = 1, 2 of 4
    assert [(c["layers"], c["tasks"]) for c in control] == [(4, ["asr"]), (4, ["st"]),
                                                           (4, ["asr", "st"])]  # fmt: skip
    ref = pruned[0]
    assert ref["spec"]["steps"] == 3 and ref["spec"]["batch_size"] == 3
    for c in pruned + control + cells["joint_calls"]:
        assert c["spec"] == ref["spec"] and c["texts"] == ref["texts"]  # steps, lr, data
        assert all(torch_equal(a, b) for a, b in zip(c["feats"], ref["feats"], strict=True))
    # the recorded budgets agree, and the tables refuse a control given another budget
    df, ctrl = cells["pruning"][0], cells["control"][0]
    cols = list(healing_report.BUDGET)
    healed = df[df.healed]
    assert (healed[cols].to_numpy() == ctrl[cols].iloc[0].to_numpy()).all()
    assert ctrl.heal_examples.iloc[0] == 3 * 3 and ctrl.heal_utterances.iloc[0] == 6
    other = ctrl.assign(heal_steps=ctrl.heal_steps * 2)
    with pytest.raises(ValueError, match="differs from the control's"):
        healing_report.healing_table(df.assign(model="m"), other, 0.25)


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_joint_healing_trains_one_adapter_used_for_both_tasks(cells, tiny):
    from workflow_scripts.speechllm.heal import adapter_digest, heal
    from workflow_scripts.speechllm.model import load_speechllm
    from workflow_scripts.speechllm.run import read_features
    from workflow_scripts.speechllm.speech import read_manifest
    from workflow_scripts.speechllm.train import evaluate

    df, rec = cells["joint"]
    pruned = cells["pruning"][0]
    # one training run per removal set (not one per task), on both tasks at once
    assert [c["tasks"] for c in cells["joint_calls"]] == [["asr", "st"]] * 2
    assert sorted(zip(df.task, df.n_removed, strict=True)) == [("asr", 1), ("asr", 2), ("st", 1),
                                                                ("st", 2)]  # fmt: skip
    by_n = df.groupby("n_removed").adapter_sha256.nunique()
    assert (by_n == 1).all() and df.adapter_sha256.nunique() == 2  # one adapter per set
    assert (df.healing == "joint").all() and (df.removal_task == "asr").all()
    for r in df.itertuples():  # the removal task's sets
        assert list(r.removed) == list(pruned[pruned.n_removed == r.n_removed].removed.iloc[0])
    # the records' healed hypotheses of both tasks are those of one re-trained adapter
    model = load_speechllm(tiny["dir"], with_encoder=False)
    train = read_features(tiny["data"]["training"][0])
    texts = list(read_manifest(tiny["data"]["training"][1]).text)
    feats = read_features(tiny["data"]["testing"][0])
    test_texts = list(read_manifest(tiny["data"]["testing"][1]).text)
    hc = plan.heal_slice(tiny["cfg"], healing="joint-backward")["heal"]
    again = heal(model, [3], ["asr", "st"], train, texts, hc)  # backward, n = 1
    assert adapter_digest(again) == df[df.n_removed == 1].adapter_sha256.iloc[0]
    for task in ("asr", "st"):
        _, hyps = evaluate(again, feats, test_texts, task, 64, 4)
        got = rec[(rec.task == task) & (rec.n_removed == 1) & rec.healed]
        assert got.hypothesis.tolist() == hyps


def test_healing_records_recompute_every_wer_and_bleu(cells):
    for name in ("control", "joint", "pruning"):
        df, rec = cells[name]
        for r in df[df.healed].itertuples():
            for healed, wer, bleu in ((True, r.healed_wer, r.healed_bleu), (False, r.wer, r.bleu)):
                if not healed and name == "control":
                    assert np.isnan(wer)  # the control is the healed unpruned model only
                    continue
                g = rec[(rec.task == r.task) & (rec.n_removed == r.n_removed)
                        & (rec.healed == healed)]  # fmt: skip
                if name == "control":
                    g = g[g.healing == r.healing]
                assert len(g) == 4 and g.utterance_id.is_unique
                refs = [normalize(x) for x in g.reference]
                hyps = [normalize(x) for x in g.hypothesis]
                assert abs(jiwer.wer(refs, hyps) - wer) <= 1e-9
                assert abs(sacrebleu.corpus_bleu(hyps, [refs]).score - bleu) <= 1e-9
                assert abs(g.errors.sum() / g.words.sum() - wer) <= 1e-9
    # the per-task control and the joint one: one healed state per task and healing
    ctrl = cells["control"][1]
    modes = sorted(set(zip(ctrl.healing, ctrl.task, strict=True)))
    assert modes == [("joint", "asr"), ("joint", "st"), ("task", "asr"), ("task", "st")]


def test_healing_table_and_counts_of_the_tiny_cells(cells):
    df, rec = cells["pruning"]
    ctrl, ctrl_rec = cells["control"]
    joint, joint_rec = cells["joint"]
    heal = pd.concat([ctrl, joint], ignore_index=True)
    heal_rec = pd.concat([ctrl_rec, joint_rec], ignore_index=True)
    t = report.build_tables(pd.DataFrame(), df, rec, 0.25, {"resamples": 50}, 1, heal, heal_rec)
    h = t["healing"]
    asr = h[h.task == "asr"].set_index(["healing", "n_removed"])
    assert sorted(asr.index) == [("joint", 1), ("joint", 2), ("task", 1), ("task", 2)]
    c = ctrl.set_index(["healing", "task"]).healed_wer
    assert asr.loc[("task", 1), "control_wer"] == c[("task", "asr")]
    assert asr.loc[("joint", 1), "control_wer"] == c[("joint", "asr")]
    row = asr.loc[("task", 2)]
    assert row.wer_gain_over_control == pytest.approx(row.wer_gain - row.control_wer_gain)
    assert row.healed_wer_lo <= row.healed_wer <= row.healed_wer_hi
    s = t["summary"].iloc[0]
    assert s.wer_control == c[("task", "asr")] and s.healed_upto == 2
    for mode in ("healed", "joint"):
        assert 0 <= s[f"max_removed_{mode}_prefix"] <= 2
        assert 0 <= s[f"max_removed_{mode}_prefix_ci"] <= 2
    # st has no pruning cell here: its joint rows have no unpruned WER, so no count
    assert set(h.task) == {"asr", "st"}
    shown = report.display("healing", h)
    assert {"removed_layers_at_n", "control_wer_pct", "wer_gain_over_control_pct"} <= set(
        shown.columns
    )
    assert "wer_gain_over_control" in report.markdown("healing", h)


# ----------------------------------------------------------------------------------------
# Removable after healing: the prefix rule, on the point estimate and with confidence
# ----------------------------------------------------------------------------------------
def test_healed_prefix_counts_only_a_healed_prefix():
    assert healing_report.healed_prefix(np.array([1, 2, 3, 4]), np.array([1, 1, 0, 1], bool)) == 2
    assert healing_report.healed_prefix(np.array([1, 2, 4]), np.array([1, 1, 1], bool)) == 2  # gap
    assert healing_report.healed_prefix(np.array([2]), np.array([True])) is None  # n = 1 not healed
    assert healing_report.healed_prefix(np.array([1, 2]), np.array([0, 1], bool)) == 0


def _records(wers: dict[tuple[str, int, bool], np.ndarray], words: int = 1000) -> pd.DataFrame:
    """Records of one SpeechLLM x task: per (strategy, n, healed) one error rate per
    sentence."""
    from test_speechllm_records import sentence_records

    return sentence_records(wers, words=words)


def test_removable_after_healing_on_the_point_estimate_and_with_confidence():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.05, 0.15, 40)
    ctrl = base * 0.8  # the same training without pruning helps too
    # healed, against the control: n = 1 10% worse everywhere (within with confidence); n = 2
    # 20% worse on average, 0% on half the sentences and 40% on the other (point within,
    # upper end not); n = 3 50% worse; n = 4 within again (not a prefix). Against the
    # untrained model every n looks within (the confound: 1.5 x 0.8 = 1.2)
    healed = {1: ctrl * 1.1, 2: ctrl * np.where(np.arange(40) % 2, 1.0, 1.4), 3: ctrl * 1.5,
              4: ctrl * 1.05}  # fmt: skip
    wers = {("backward", 0, False): base}
    wers |= {("backward", n, False): base * 2 for n in healed}
    wers |= {("backward", n, True): w for n, w in healed.items()}
    rec = _records(wers)
    heal_rec = _records({("control", 0, True): ctrl}).assign(healing="task")
    sums = rec.groupby(["n_removed", "healed"])[["errors", "words"]].sum()
    point = sums.errors / sums.words
    budget = {c: 1 for c in healing_report.BUDGET}
    df = pd.DataFrame({"model": "m", "task": "asr", "strategy": "backward", "seed": pd.NA,
                       "n_removed": range(5), "n_layers": 8, "fraction_removed": 0.0,
                       "removed": [list(range(n)) for n in range(5)],
                       "wer": [point[(n, False)] for n in range(5)], "bleu": 1.0, "ser": 0.0,
                       "base_wer": point[(0, False)], "base_bleu": 1.0, "decoder_params": 1,
                       "healed": [n > 0 for n in range(5)],
                       "healed_wer": [np.nan] + [point[(n, True)] for n in range(1, 5)],
                       "healed_bleu": np.nan, **budget})  # fmt: skip
    df["seed"] = df.seed.astype("Int64")
    control_wer = heal_rec.errors.sum() / heal_rec.words.sum()
    heal = pd.DataFrame([{"model": "m", "task": "asr", "strategy": "control",
                          "healing": "task", "seed": pd.NA, "n_removed": 0, "removed": [],
                          "healed": True, "healed_wer": control_wer, **budget}])  # fmt: skip
    t = report.build_tables(pd.DataFrame(), df, rec, 0.25, {"resamples": 500, "seed": 1}, 1,
                            heal, heal_rec)  # fmt: skip
    h = t["healing"].set_index("n_removed")
    assert h.delta_wer_base.max() <= 0.25  # the confounded reading: all 4 "removable"
    assert h.delta_wer_control.loc[1] == pytest.approx(0.1, abs=5e-3)  # errors rounded
    assert h.delta_wer_control_lo.loc[2] < h.delta_wer_control.loc[2] <= 0.25
    assert h.delta_wer_control_hi.loc[2] > 0.25
    assert h.within_threshold.tolist() == [True, True, False, True]
    assert h.control_wer_gain.iloc[0] == pytest.approx(point[(0, False)] - control_wer)
    s = t["summary"].iloc[0]
    assert s.max_removed_healed_prefix == 2 and s.max_removed_healed_prefix_ci == 1
    assert s.healed_upto == 4 and pd.isna(s.max_removed_joint_prefix)
    assert s.max_removed_prefix == 0  # unhealed: twice the WER at every n
    md = report.markdown("summary", t["summary"])
    assert "max_removed_healed_prefix_ci" in md and "wer_control_pct" in md
