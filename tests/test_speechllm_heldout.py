"""The SpeechLLM test set (issue #28): the default grid's 200 test utterances say 200 distinct
sentences, none of which the shipped models' training (config/pretrain_speechllm.yaml,
replayed without audio) ever drew, and adding the extra test sentences leaves every training
draw unchanged, so the shipped models stay what their recipe makes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT

from workflow_scripts.speechllm import plan, text
from workflow_scripts.speechllm.speech import split_sentences
from workflow_scripts.speechllm.unseen import load_config, trained_sentences, unseen_sentences

TEXT_CFG = {"seed": 0, "heldout_share": 0.2, "heldout_max": 20}


@pytest.fixture(scope="module")
def configs():
    shipped = load_config([ROOT / "config/pretrain_speechllm.yaml"], root=ROOT)
    return {"default": load_config(root=ROOT), "shipped": shipped}


def test_default_test_split_says_200_distinct_sentences_the_shipped_models_never_saw(configs):
    cfg = configs["default"]
    sp, txt = cfg["speechllm"]["speech"], plan.text_slice(cfg)
    said = split_sentences("testing", sp["utterances"]["testing"], cfg["corpus"], txt,
                           sp["seed"], sp["sessions"])  # fmt: skip
    assert len(said) == 200 and len(set(said)) >= 200
    assert set(said) <= set(text.Sentences(txt).heldout_sentences("testing"))
    shipped = configs["shipped"]
    assert plan.text_slice(shipped) == txt  # the recipe's text config is the default's
    with_extra = trained_sentences(shipped)
    without = trained_sentences(shipped, {**txt, "extra_test_sentences": None})
    # the decoder's text pretraining and the 20,000 training utterances, both replayed
    assert set(with_extra) == {"pretraining:decoder-small", "training split"}
    assert len(with_extra["training split"]) == 20_000
    assert with_extra == without  # the held-out additions change no training draw
    drawn = {s for v in without.values() for s in v}
    assert not drawn & set(said)
    assert not drawn & set(text.Sentences(txt).heldout_sentences("validation"))


def test_the_extra_sentences_file_is_what_the_generator_writes(configs):
    extra = text.extra_test_sentences(plan.text_slice(configs["default"]))
    assert len(extra) == 100 and len(set(extra)) == 100
    assert extra == unseen_sentences(configs["shipped"], 100)


def test_the_test_split_says_every_sentence_once_before_any_twice():
    extra = ["one two three four", "nine nine nine nine", "zero one zero one"]
    s = text.Sentences({**TEXT_CFG, "extra_test_sentences": extra})
    n = len(s.heldout_sentences("testing"))
    assert n == 100 + 3 and set(extra) <= set(s.test_order)
    rng = np.random.default_rng(0)
    first = [s.sentence("testing", i, rng) for i in range(n)]
    assert len(set(first)) == n
    assert [s.sentence("testing", n + i, rng) for i in range(5)] == first[:5]
    assert set(extra) <= s.excluded  # training never draws them
    # the other splits draw as before
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    plain = text.Sentences(TEXT_CFG)
    assert [s.sentence("validation", i, a) for i in range(50)] == [
        plain.draw("validation", b) for _ in range(50)
    ]


@pytest.mark.parametrize(
    "extra, problem",
    [(["go home"], "no sentences of the command language"),
     (["one two three four", "one two three four"], "listed twice")],
)  # fmt: skip
def test_bad_extra_test_sentences_are_refused(extra, problem):
    with pytest.raises(ValueError, match=problem):
        text.Sentences({**TEXT_CFG, "extra_test_sentences": extra})
    held = text.Sentences(TEXT_CFG).heldout_sentences("validation")[0]
    with pytest.raises(ValueError, match="already held out"):
        text.Sentences({**TEXT_CFG, "extra_test_sentences": [held]})


def test_a_missing_extra_sentences_file_names_its_key(configs, tmp_path):
    import copy

    from workflow_scripts.speechllm.plan import config_problems

    cfg = copy.deepcopy(configs["default"])
    cfg["speechllm"]["text"]["extra_test_sentences"] = str(tmp_path / "none.txt")
    problems = config_problems(cfg)
    assert any(p.startswith("config.speechllm.text.extra_test_sentences: no sentence file")
               for p in problems), problems  # fmt: skip


def test_synthesized_test_split_says_the_test_sentences_in_order(tmp_path):
    from helpers import TINY

    from workflow_scripts.core.config import validate_config
    from workflow_scripts.speechllm.speech import synthesize_split

    corpus = validate_config({"corpus": TINY["corpus"]})["corpus"]
    cfg = {**TEXT_CFG, "extra_test_sentences": ["one two three four", "five six seven eight"]}
    df = synthesize_split(tmp_path / "t", "testing", 4, corpus, cfg, 0, augment=False,
                          sessions=20)  # fmt: skip
    assert df.text.tolist() == text.Sentences(cfg).test_order[:4]
    assert df.text.nunique() == 4


def test_extra_sentence_file_is_found_from_another_working_directory(tmp_path, monkeypatch):
    """`snakemake --directory smoke/paper` (make smoke-paper) runs with another working
    directory: the config's relative sentence file is still the project's."""
    from workflow_scripts.speechllm.text import extra_test_sentences, read_sentences

    rel = "config/speechllm_extra_test_sentences.txt"
    expected = read_sentences(rel)
    monkeypatch.chdir(tmp_path)
    assert extra_test_sentences({"extra_test_sentences": rel}) == expected
    (tmp_path / "config").mkdir()
    (tmp_path / rel).write_text("one two three four\n")  # a file of the working directory wins
    assert extra_test_sentences({"extra_test_sentences": rel}) == ["one two three four"]
