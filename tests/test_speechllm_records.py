"""SpeechLLM evidence a reader can check (issue 28): per-utterance records that recompute every
WER and BLEU of a pruning cell, one ΔWER, sentence-level bootstrap intervals and the removable
counts built on them, pair labels from the models' factors, the one text normaliser and the one
BOS rule."""

from __future__ import annotations

import jiwer
import numpy as np
import pandas as pd
import pytest
import sacrebleu

from workflow_scripts.speechllm import metrics, report
from workflow_scripts.speechllm.text import normalize


# ----------------------------------------------------------------------------------------
# Records of a real (tiny) pruning cell
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def st_cell(tmp_path_factory):
    from test_speechllm import speech_world
    from test_speechllm_cells import config

    from workflow_scripts.speechllm import plan
    from workflow_scripts.speechllm.run import pruning_cell

    tmp = tmp_path_factory.mktemp("records")
    data = speech_world(tmp, {"training": 6, "testing": 5})
    cell = plan.cell_slice(config(outputs=["speechllm"]), task="st", strategy="random")
    cell["settings"]["seeds"] = [0, 1]
    cell["max_new_tokens"] = 4  # hypotheses about as long as the references
    cell["heal"].update(n=[1], steps=2, batch_size=3)
    return pruning_cell(cell, sllm="m", task="st", strategy="random", model_dir=str(tmp / "sllm"),
                        test=data["testing"], calibration=None, train=data["training"])  # fmt: skip


def test_records_recompute_every_wer_and_bleu_of_the_cell(st_cell):
    df, rec = st_cell
    assert len(df) == 2 * 4 and df.healed.sum() == 2  # 2 seeds x n = 0..3; n = 1 healed
    assert set(rec.columns) >= {"utterance_id", "sentence_id", "task", "reference", "hypothesis",
                                "seed", "n_removed", "healed"}  # fmt: skip
    for r in df.itertuples():
        for healed, wer, bleu in ((False, r.wer, r.bleu), (True, r.healed_wer, r.healed_bleu)):
            if healed and not r.healed:
                assert not (
                    (rec.seed == r.seed) & (rec.n_removed == r.n_removed) & rec.healed
                ).any()
                continue
            g = rec[(rec.seed == r.seed) & (rec.n_removed == r.n_removed) & (rec.healed == healed)]
            assert len(g) == 5 and g.utterance_id.is_unique and (g.task == "st").all()
            refs = [normalize(x) for x in g.reference]
            hyps = [normalize(x) for x in g.hypothesis]
            assert abs(jiwer.wer(refs, hyps) - wer) <= 1e-9
            assert abs(sacrebleu.corpus_bleu(hyps, [refs]).score - bleu) <= 1e-9
            assert abs(g.errors.sum() / g.words.sum() - wer) <= 1e-9
            assert list(g.removed.iloc[0]) == list(r.removed)
    states = rec.groupby(["seed", "n_removed", "healed"]).hypothesis.agg(tuple)
    assert (rec.hypothesis != "").all() and states.nunique() > 2
    # the unpruned state of each seed is the same model: the same hypotheses
    z = rec[(rec.n_removed == 0) & ~rec.healed]
    assert z[z.seed == 0].hypothesis.tolist() == z[z.seed == 1].hypothesis.tolist()
    assert (df.encoder == "enc").all() and (df.decoder == "dec-llama").all()


def test_bootstrap_of_the_cell_brackets_its_point_wer(st_cell):
    df, rec = st_cell
    iv = report.bootstrap(rec, resamples=200, level=0.95, seed=3)
    again = report.bootstrap(rec, resamples=200, level=0.95, seed=3)
    pd.testing.assert_frame_equal(iv, again)  # seeded
    mean = df.groupby("n_removed").wer.mean()
    for r in iv[~iv.healed].itertuples():
        assert r.wer_records == pytest.approx(mean[r.n_removed], abs=1e-12)
        assert r.wer_lo <= r.wer_records <= r.wer_hi
    assert (iv[iv.n_removed == 0].delta_wer_hi == 0).all()


# ----------------------------------------------------------------------------------------
# Bootstrap over sentences, removable counts
# ----------------------------------------------------------------------------------------
def sentence_records(wers: dict[tuple[str, int, bool], list[float]], per_sentence: int = 1,
                     words: int = 10) -> pd.DataFrame:  # fmt: skip
    """Records of one SpeechLLM x task: per (strategy, n, healed), one error rate per
    sentence, each sentence spoken ``per_sentence`` times with ``words`` reference words."""
    rows = []
    for (strategy, n, healed), w_s in wers.items():
        for s, w in enumerate(w_s):
            for u in range(per_sentence):
                rows.append({"model": "m", "task": "asr", "strategy": strategy, "seed": pd.NA,
                             "n_removed": n, "healed": healed, "utterance_id": f"{s}-{u}",
                             "sentence_id": f"s{s}", "errors": round(w * words),
                             "words": words})  # fmt: skip
    df = pd.DataFrame(rows)
    df["seed"] = df.seed.astype("Int64")
    return df


def _records(wers_by_n: dict[int, list[float]], per_sentence: int = 1, words: int = 10):
    """:func:`sentence_records` of one unhealed backward cell, per n."""
    wers = {("backward", n, False): w for n, w in wers_by_n.items()}
    return sentence_records(wers, per_sentence, words)


def test_bootstrap_resamples_sentences_not_utterances():
    # two sentences, each spoken 50 times: one always wrong, one always right. Resampling the
    # 100 utterances would give a WER near 0.5 every time; resampling the 2 sentences gives
    # 0, 0.5 or 1.
    rec = _records({0: [1.0, 0.0]}, per_sentence=50)
    iv = report.bootstrap(rec, resamples=400, level=0.95, seed=0).iloc[0]
    assert iv.wer_records == 0.5 and iv.sentences == 2
    assert iv.wer_lo == 0.0 and iv.wer_hi == 1.0


def test_removable_counts_on_the_point_estimate_and_with_confidence():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.05, 0.15, 40)
    # n = 1: 10% worse everywhere (within 0.25 with confidence); n = 2: 20% worse on average
    # but 0% on half the sentences and 40% on the other half (point within, upper bound not);
    # n = 3: 60% worse; n = 4: 5% worse (within again, but not a prefix)
    noisy = base * np.where(np.arange(40) % 2, 1.0, 1.4)
    rec = _records({0: base, 1: base * 1.1, 2: noisy, 3: base * 1.6, 4: base * 1.05},
                   words=1000)  # fmt: skip
    iv = report.bootstrap(rec, resamples=500, seed=1)
    wer = iv[~iv.healed].sort_values("n_removed").wer_records.to_numpy()
    df = pd.DataFrame({"model": "m", "task": "asr", "strategy": "backward", "seed": pd.NA,
                       "n_removed": range(5), "n_layers": 8, "fraction_removed": 0.0,
                       "removed": [list(range(n)) for n in range(5)], "wer": wer,
                       "bleu": 1.0, "ser": 0.0, "base_wer": wer[0], "base_bleu": 1.0,
                       "decoder_params": 1, "healed": False, "healed_wer": np.nan,
                       "healed_bleu": np.nan})  # fmt: skip
    df["seed"] = df.seed.astype("Int64")
    s = report.summary_table(df, 0.25, iv).iloc[0]
    assert s.max_removed == 4 and s.max_removed_prefix == 2 and s.max_removed_prefix_ci == 1
    assert s.delta_wer_at_prefix_lo < s.delta_wer_at_prefix <= 0.25 < s.delta_wer_at_prefix_hi
    assert s.base_wer_lo < s.base_wer < s.base_wer_hi
    assert "max_removed_prefix_ci" in report.markdown("summary", pd.DataFrame([s]))


def test_delta_wer_is_the_relative_difference():
    assert metrics.delta_wer(0.2, 0.1) == pytest.approx(1.0)  # twice the WER: ΔWER 1
    assert metrics.delta_wer(0.125, 0.1) == pytest.approx(0.25)
    assert metrics.delta_wer(0.0, 0.0) == 0.0 and metrics.delta_wer(0.1, 0.0) == np.inf
    assert np.isnan(metrics.delta_wer(np.nan, 0.1))


# ----------------------------------------------------------------------------------------
# Pair labels from the models' factors
# ----------------------------------------------------------------------------------------
def _block(model, enc, dec, start, n_layers=4, task="asr", inp="speech", lang="en", n=2):
    return {"model": model, "task": task, "input": inp, "n": n, "start": start,
            "blocks": list(range(start, start + n)), "distance": 0.1, "runner_up_margin": 0.01,
            "n_layers": n_layers, "encoder": enc, "decoder": dec, "language": lang}  # fmt: skip


def test_pairs_of_two_encoders_by_two_decoders_are_labelled_by_what_differs():
    blocks = pd.DataFrame([_block("hx", "hubert", "qwen", 1), _block("hy", "hubert", "llama", 1),
                           _block("wx", "wavlm", "qwen", 2), _block("wy", "wavlm", "llama", 1),
                           _block("hx", "hubert", "qwen", 1, task="st"),
                           _block("hx", "hubert", "qwen", 0, inp="text")])  # fmt: skip
    pairs = report.overlap_pairs(blocks)
    label = {frozenset((p.a, p.b)): p.factor for p in pairs.itertuples()}
    want = {
        ("hx/asr/speech", "hy/asr/speech"): "decoder",
        ("hx/asr/speech", "wx/asr/speech"): "encoder",
        ("hx/asr/speech", "wy/asr/speech"): "both",
        ("hy/asr/speech", "wx/asr/speech"): "both",
        ("hy/asr/speech", "wy/asr/speech"): "encoder",
        ("wx/asr/speech", "wy/asr/speech"): "decoder",
        ("hx/asr/speech", "hx/st/speech"): "task",
        ("hx/asr/speech", "hx/asr/text"): "input",
        ("hx/st/speech", "hx/asr/text"): "task+input",
        ("hy/asr/speech", "hx/st/speech"): "decoder+task",
        ("wy/asr/speech", "hx/asr/text"): "encoder+decoder+input",
    }
    for (a, b), lab in want.items():
        assert label[frozenset((a, b))] == lab, (a, b)
    assert len(pairs) == 15  # every pair of the 6 choices
    t = report.overlap_table(blocks, 2).set_index("model")
    assert (
        t.loc["across encoder", "pairs"] == 2 and t.loc["across encoder", "mean_jaccard"] == 2 / 3
    )
    assert t.loc["across both", "pairs"] == 2 and t.loc["across decoder", "pairs"] == 2
    assert "across language" not in t.index  # no pair differs in language only


def test_blocks_of_decoders_of_unequal_depth_are_compared_as_fractions_of_depth():
    # block 2..3 of 4 layers = [0.5, 1.0); block 4..5 of 8 layers = [0.5, 0.75): Jaccard 0.5;
    # as layer sets they would be disjoint (0) - and 2..3 of 8 would falsely be identical
    blocks = pd.DataFrame([_block("a", "e", "small", 2, n_layers=4),
                           _block("b", "e", "big", 4, n_layers=8),
                           _block("c", "e", "big2", 2, n_layers=8)])  # fmt: skip
    pairs = report.overlap_pairs(blocks).set_index("b")
    assert pairs.loc["b/asr/speech", "compared"] == "fraction of depth"
    assert pairs.loc["b/asr/speech", "jaccard"] == pytest.approx(0.5)
    ac = pairs[(pairs.a == "a/asr/speech")].loc["c/asr/speech"]
    assert ac.jaccard == 0.0
    bc = pairs[(pairs.a == "b/asr/speech")].loc["c/asr/speech"]
    assert bc.compared == "layers" and bc.jaccard == 0.0


def test_redundant_blocks_report_the_runner_up_margin():
    rows = [{"model": "m", "task": "asr", "input": "text", "metric": "angular", "layer": layer,
             "n": 1, "value": v, "n_layers": 3}
            for layer, v in enumerate([0.30, 0.10, 0.14])]  # fmt: skip
    b = report.redundant_blocks(pd.DataFrame(rows)).iloc[0]
    assert b.blocks == [1] and b.runner_up_margin == pytest.approx(0.04)


# ----------------------------------------------------------------------------------------
# One normaliser, one BOS rule
# ----------------------------------------------------------------------------------------
def test_one_normaliser_for_references_and_hypotheses():
    assert normalize("  Turn ON, the House!  ") == "turn on the house"
    assert normalize("Schalte das Haus an.") == "schalte das haus an"
    assert normalize("it's 3 o'clock") == "it s 3 o clock"  # digits kept as written
    assert normalize("Füße\tgeh  RECHTS") == "füße geh rechts"
    assert metrics.wer(["Go left."], ["go  LEFT"]) == 0.0
    assert metrics.wer(["go left"], ["Go, right!"]) == 0.5
    assert metrics.bleu(["Das Haus ist froh."], ["das haus ist froh"]) == pytest.approx(100.0)
    assert metrics.sentence_errors(["Stop!", "go up"], ["stop", "go down"]) == 0.5
    assert metrics.utterance_errors("Go left.", "go") == (1, 2)


def test_bos_is_added_once_for_text_and_speech_input(tmp_path):
    import torch
    from test_speechllm import tiny_speechllm

    from workflow_scripts.speechllm.similarity import text_batch

    model, _, _ = tiny_speechllm(tmp_path, with_encoder=False)
    bos = model.tokenizer.bos_token_id
    assert bos is not None
    with_bos = dict(model.prompts)
    model.prompts = {"asr": "<speech> {speech} </speech> <asr>"}  # no <bos> written
    model._prompt_cache.clear()
    before, _ = model.prompt_ids("asr")
    assert before[0] == bos and before.count(bos) == 1
    model.prompts = with_bos  # the default prompts write <bos>: not doubled
    model._prompt_cache.clear()
    before, _ = model.prompt_ids("asr")
    assert before[0] == bos and before.count(bos) == 1
    emb, mask, _ = text_batch(model, ["go left"])
    first = emb[0, int((mask[0] == 0).sum())]
    assert torch.equal(first, model.embed_tokens([bos])[0])
    assert model.with_bos([bos, 5]) == [bos, 5] and model.with_bos([5]) == [bos, 5]
