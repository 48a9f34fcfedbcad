"""The SpeechLLM stage's plan, cells and tables: the grid a config gives, the cells' slices and
inputs, the cell functions on a tiny random SpeechLLM, and the summary / overlap tables."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT

from workflow_scripts import grid
from workflow_scripts.core import paths
from workflow_scripts.core.config import ConfigError
from workflow_scripts.core.sources import Source, model_files
from workflow_scripts.speechllm import plan, report

SECTION = {
    "speech": {"utterances": {"training": 12, "validation": 6, "testing": 6}},
    "models": {"a": {"hf": "models/a"}, "b": {"hf": "models/b"}},
    "pruning": {"strategies": {"angular_block": {}, "backward": {}, "random": {"seeds": [0, 1]}},
                "heal": {"n": [1], "steps": 2, "batch_size": 4}},
}  # fmt: skip


def config(section=None, **top):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    # the SpeechLLM specs below name their encoder by its registry entry, as
    # config/pretrain_speechllm.yaml does (hubert-small is not in the default keyword grid)
    cfg["models"].setdefault("hubert-small", {"hf": "models/hubert-small"})
    cfg["speechllm"] = copy.deepcopy(SECTION if section is None else section)
    cfg.update(top)
    return grid.validate(cfg)


def test_grid_cells_slices_and_inputs():
    cfg = config(outputs=["speechllm"])
    cells = plan.cells(cfg)
    assert len(plan.similarity_cells(cfg)) == 2 * 2 * 2  # models x tasks x inputs
    assert len(plan.pruning_cells(cfg)) == 2 * 2 * 3  # models x tasks x strategies
    assert len(cells) == 20 and len(set(plan.cell_paths(cfg))) == 20
    assert paths.path("speechllm_pruning_cell", sllm="a", task="st", strategy="random") in \
        grid.targets(cfg)  # fmt: skip
    s = plan.cell_slice(cfg, sllm="a", task="asr", strategy="angular_block")
    assert s["calibration_input"] == "speech" and s["heal"]["n"] == [1]
    assert "calibration_input" not in plan.cell_slice(cfg, sllm="a", task="asr",
                                                      strategy="backward")  # fmt: skip
    # the same slice for every model; the threshold is the tables', not the cells'
    assert s == plan.cell_slice(cfg, sllm="b", task="asr", strategy="angular_block")
    assert "threshold" not in s and plan.tables_slice(cfg)["threshold"] == 0.25
    inp = plan.cell_inputs(cfg, sllm="a", task="st", strategy="backward")
    assert set(inp) == {"model", "testing_features", "testing_speech", "training_features",
                        "training_speech"}  # fmt: skip
    inp = plan.cell_inputs(cfg, sllm="a", task="st", input="text")
    assert set(inp) == {"model", "validation_features", "validation_speech"}
    wc = plan.wildcard_constraints(cfg)
    assert wc["strategy"] == "backward|angular_block|random"  # registry order
    assert wc["decoder"] == "NO_DECODER"


def test_pretrained_family_and_sources():
    section = {
        **SECTION,
        "decoders": {"dec": {"pretrain": {"layers": 2, "hidden": 16, "heads": 2}}},
        "models": {"m": {"train": {"encoder": "hubert-small", "decoder": "dec"}}},
    }
    cfg = config(section, outputs=["speechllm_pretrained"], pretrained_dir="models")
    assert grid.targets(cfg) == ["models/dec", "models/m"]
    s = plan.train_slice(cfg, sllm="m")
    assert s["encoder"] == "models/hubert-small" and s["decoder"] == "models/dec"
    assert s["train"]["steps"] == 1000  # the defaults filled in
    inp = plan.train_inputs(cfg, sllm="m")
    assert inp["decoder"] == "models/dec"  # the pretraining rule's output folder
    # a shipped encoder: its files (not the folder, which the backbones' pretraining rule
    # writing to the same pretrained_dir could claim), as sources with digests in the params
    assert inp["encoder"] == model_files("models/hubert-small")
    assert all(isinstance(f, Source) for f in inp["encoder"])
    assert plan.model_source(cfg, "m") == "models/m"


def test_config_problems_name_their_keys():
    bad = copy.deepcopy(SECTION)
    bad["pruning"]["strategies"] = {"similarity_greedy": {}, "angular_block": {"reduce": "all"},
                                    "random": {"seedz": [1]}}  # fmt: skip
    bad["speech"]["utterances"]["training"] = 0
    bad["models"]["hubert-small"] = {"hf": "x"}
    with pytest.raises(ConfigError) as err:
        config(bad)
    msg = str(err.value)
    for key in ("config.speechllm.pruning.strategies: ['similarity_greedy']",
                "angular_block.reduce", "random: unknown key(s) ['seedz']",
                "speech.utterances.training", "names ['hubert-small']"):  # fmt: skip
        assert key in msg, key


def _pruning_rows(model, task, strategy, wers, seed=None, healed=None):
    L = len(wers)
    return [{"model": model, "task": task, "strategy": strategy, "seed": seed, "n_removed": n,
             "n_layers": L, "fraction_removed": n / L, "removed": list(range(n)), "wer": w,
             "bleu": 50.0, "ser": 0.5, "base_wer": wers[0], "base_bleu": 50.0,
             "decoder_params": 100 - n, "healed": healed is not None and n == 1,
             "healed_wer": healed if healed is not None and n == 1 else np.nan,
             "healed_bleu": np.nan} for n, w in enumerate(wers)]  # fmt: skip


def test_summary_counts_the_largest_fraction_within_the_threshold():
    rows = _pruning_rows("a", "asr", "backward", [0.10, 0.11, 0.124, 0.2, 0.12], healed=0.105)
    rows += _pruning_rows("a", "asr", "random", [0.1, 0.11, 0.3, 0.3, 0.3], seed=0)
    rows += _pruning_rows("a", "asr", "random", [0.1, 0.13, 0.3, 0.3, 0.3], seed=1)
    df = pd.DataFrame(rows)
    df["seed"] = df.seed.astype("Int64")
    s = report.summary_table(df, threshold=0.25).set_index("strategy")
    assert s.loc["backward", "max_removed"] == 4 and s.loc["backward", "max_removed_prefix"] == 2
    assert s.loc["backward", "max_removed_fraction"] == pytest.approx(0.8)
    assert s.loc["backward", "wer_after_heal"] == "0.1050"
    assert s.loc["random", "max_removed"] == 1  # mean over seeds at n = 1: 0.12, 20% worse
    d = report.add_degradation(df, 0.25)
    assert d.delta_wer.iloc[0] == 0.0 and d.within_threshold.iloc[2]
    assert d.delta_wer.iloc[3] == pytest.approx(1.0)  # 0.2 vs 0.1: twice the WER, ΔWER 1


def _sim_rows(model, task, inp, D, **extra):
    """Angular-distance rows of one SpeechLLM x task x input from the distance matrix ``D``
    (``extra``: more columns, e.g. condition, encoder, decoder, language)."""
    from workflow_scripts.speechllm.similarity import distance_rows

    return [{"model": model, "task": task, "input": inp, "metric": "angular", "n_layers": 4,
             "value": r["distance"], "layer": r["layer"], "n": r["n"], **extra}
            for r in distance_rows(D)]  # fmt: skip


def two_block_distances() -> tuple[np.ndarray, np.ndarray]:
    """Two 5 x 5 angular-distance matrices whose most redundant block of n = 2 layers differs:
    layers 1..2 in the first, 2..3 in the second."""
    D = np.random.default_rng(0).uniform(0.3, 0.6, (5, 5))
    D[1, 3] = 0.01  # n = 2: block 1..2
    other = D.copy()
    other[2, 4] = 0.005  # n = 2: block 2..3
    return D, other


def test_overlap_table_compares_blocks_across_encoders_tasks_and_inputs():
    D, other = two_block_distances()
    rows = _sim_rows("a", "asr", "speech", D) + _sim_rows("b", "asr", "speech", D)
    rows += _sim_rows("a", "st", "speech", other) + _sim_rows("a", "asr", "text", D)
    blocks = report.redundant_blocks(pd.DataFrame(rows))
    t = report.overlap_table(blocks, 2).set_index("model")
    assert [list(b) for b in t.loc["a"].blocks] == [[1, 2], [2, 3], [1, 2]]
    assert t.loc["across encoder", "mean_jaccard"] == 1.0
    assert t.loc["across input", "mean_jaccard"] == 1.0
    assert t.loc["across task", "mean_jaccard"] == pytest.approx(1 / 3)  # {1,2} vs {2,3}
    pairs = report.overlap_pairs(blocks)
    assert set(pairs.factor) == {"encoder", "task", "input", "encoder+task", "encoder+input",
                                 "task+input"} and set(pairs.n) == {1, 2, 3, 4}  # fmt: skip
    assert (pairs.compared == "layers").all()


def test_cells_on_a_tiny_speechllm(tmp_path):
    from helpers import TINY
    from test_speechllm import TEXT_CFG, never_ending, tiny_speechllm

    from workflow_scripts.core.config import validate_config
    from workflow_scripts.speechllm import metrics
    from workflow_scripts.speechllm.model import load_speechllm, save_speechllm
    from workflow_scripts.speechllm.pruning import remove_layers
    from workflow_scripts.speechllm.run import (
        pruning_cell,
        read_features,
        similarity_cell,
        write_features,
    )
    from workflow_scripts.speechllm.speech import read_manifest, synthesize_split
    from workflow_scripts.speechllm.train import evaluate

    model, enc_src, dec_src = tiny_speechllm(tmp_path)
    save_speechllm(model, tmp_path / "sllm", enc_src, dec_src)
    never_ending(dec_src)  # non-empty hypotheses that differ between the states
    corpus = validate_config({"corpus": TINY["corpus"]})["corpus"]
    data = {}
    for split, n in (("training", 6), ("validation", 4), ("testing", 3)):
        synthesize_split(tmp_path / split, split, n, corpus, TEXT_CFG, 0, augment=False)
        write_features(str(tmp_path / "sllm"), str(tmp_path / split), str(tmp_path / f"{split}.st"))
        data[split] = (str(tmp_path / f"{split}.st"), str(tmp_path / split))
    assert len(read_features(data["testing"][0])) == 3
    cfg = config(outputs=["speechllm"])
    val_feats, val_speech = data["validation"]
    sim = similarity_cell(plan.cell_slice(cfg, task="st", input="speech"), sllm="m", task="st",
                          input_type="speech", model_dir=str(tmp_path / "sllm"),
                          features=val_feats, speech_dir=val_speech)  # fmt: skip
    assert set(sim.metric) == {"angular", "block_influence"} and (sim.utterances == 4).all()
    assert len(sim[sim.metric == "angular"]) == 10 and sim.n_layers.iloc[0] == 4
    cell = plan.cell_slice(cfg, task="asr", strategy="angular_block")
    cell["heal"].update(n=[2], steps=2, batch_size=3)
    cell["max_new_tokens"] = 4  # hypotheses about as long as the references
    df, rec = pruning_cell(cell, sllm="m", task="asr", strategy="angular_block",
                           model_dir=str(tmp_path / "sllm"), test=data["testing"],
                           calibration=data["validation"], train=data["training"])  # fmt: skip
    assert df.n_removed.tolist() == [0, 1, 2, 3]
    states = rec[~rec.healed].groupby("n_removed").hypothesis.agg(tuple)
    assert (rec.hypothesis != "").all() and states.nunique() > 1  # the states differ
    # every state's hypotheses are those of a freshly loaded model with its set removed by
    # copy, and the base WER is the fresh unpruned model's (a removal leaking into the next
    # set, or a base taken from another state, fails here)
    fresh = load_speechllm(tmp_path / "sllm", with_encoder=False)
    feats = read_features(data["testing"][0])
    texts = list(read_manifest(data["testing"][1]).text)
    for r in df.itertuples():
        m = type(fresh)(remove_layers(fresh.decoder, r.removed), fresh.tokenizer,
                        fresh.projector, fresh.prompts)  # fmt: skip
        refs, hyps = evaluate(m, feats, texts, "asr", cell["batch_size"], cell["max_new_tokens"])
        got = rec[(rec.n_removed == r.n_removed) & ~rec.healed]
        assert got.hypothesis.tolist() == hyps and r.wer == metrics.wer(refs, hyps)
        if r.n_removed == 0:
            assert (df.base_wer == metrics.wer(refs, hyps)).all()
    assert df.healed.tolist() == [False, False, True, False] and df.healed_wer.notna().sum() == 1
    assert df.scores.iloc[0] and (df.test_utterances == 3).all()
    back, _ = pruning_cell({**cell, "strategy": "backward"}, sllm="m", task="asr",
                        strategy="backward", model_dir=str(tmp_path / "sllm"),
                        test=data["testing"], calibration=data["validation"],
                        train=data["training"])  # fmt: skip
    assert back.wer.iloc[0] == df.wer.iloc[0]  # n = 0: the same unpruned model
    assert back.removed.iloc[2] == [2, 3]
