"""The paper's three conditions (Moumen et al., Fig. 1a-c) and a second target language (issue
#28): text through the base decoder (no adapter loaded), a frozen-decoder SpeechLLM (projector
only), the LoRA SpeechLLM, each a ``condition`` of the similarity cells read from the model's
config; the Spanish translation task ``st_es``; and the overlap table's labels for pairs that
differ in condition or target language."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_speechllm import TEXT_CFG, tiny_speechllm

from workflow_scripts.speechllm import plan, report, text
from workflow_scripts.speechllm.settings import DEFAULT_PROMPTS

TEXTS = ["marvin go left", "turn on the house", "one two three", "the cat is happy"]


def _text_states(model, texts):
    from workflow_scripts.speechllm.similarity import residual_states, text_batch

    emb, mask, pos = text_batch(model, [text.target_text(t, "asr") for t in texts])
    return residual_states(model.decoder, emb, mask, pos)


def _split(tmp_path, name, texts, dim=32):
    """A split folder (manifest only) and a features file of random encoder features."""
    from workflow_scripts.speechllm.features import write_features

    folder = tmp_path / name
    folder.mkdir()
    pd.DataFrame({"path": [f"{i:05d}.wav" for i in range(len(texts))], "text": texts}).to_parquet(
        folder / "manifest.parquet"
    )
    g = torch.Generator().manual_seed(0)
    write_features(tmp_path / f"{name}.st", [torch.randn(12, dim, generator=g) for _ in texts])
    return str(tmp_path / f"{name}.st"), str(folder)


# ----------------------------------------------------------------------------------------
# (a) text through the base decoder
# ----------------------------------------------------------------------------------------
def test_base_condition_is_the_decoder_without_its_adapter(tmp_path):
    from workflow_scripts.speechllm.model import load_decoder, load_speechllm, save_speechllm
    from workflow_scripts.speechllm.tokenizer import load_tokenizer

    model, enc_src, dec_src = tiny_speechllm(tmp_path)  # LoRA B non-zero: the adapter matters
    save_speechllm(model, tmp_path / "sllm", enc_src, dec_src)
    base = load_speechllm(tmp_path / "sllm", with_encoder=False, adapter=False)
    merged = load_speechllm(tmp_path / "sllm", with_encoder=False)
    assert not hasattr(base.decoder, "peft_config")
    plain = type(base)(load_decoder(dec_src), load_tokenizer(dec_src), base.projector,
                       base.prompts)  # fmt: skip
    got, want, lora = (_text_states(m, TEXTS) for m in (base, plain, merged))
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)  # the base decoder's own states, bit for bit
    assert max(float((g - x).abs().max()) for g, x in zip(got[1:], lora[1:], strict=True)) > 1e-4


def test_similarity_cells_carry_the_condition(tmp_path):
    from workflow_scripts.speechllm.model import load_speechllm, save_speechllm
    from workflow_scripts.speechllm.run import similarity_cell
    from workflow_scripts.speechllm.similarity import decoder_similarity

    lora, enc_src, dec_src = tiny_speechllm(tmp_path)
    save_speechllm(lora, tmp_path / "lora", enc_src, dec_src)
    frozen, _, _ = tiny_speechllm(tmp_path / "f", lora=False)
    save_speechllm(frozen, tmp_path / "frozen", enc_src, dec_src)
    feats, speech = _split(tmp_path, "validation", TEXTS)
    cell = {"task": "asr", "input": "text", "reduce": "last", "utterances": None,
            "batch_size": 3, "base_decoder": True}  # fmt: skip
    kw = {"task": "asr", "features": feats, "speech_dir": speech}
    df = similarity_cell(cell, sllm="l", input_type="text", model_dir=str(tmp_path / "lora"), **kw)
    assert sorted(set(df.condition)) == ["base", "lora"]
    b = df[(df.condition == "base") & (df.metric == "angular")]
    assert (b.encoder == "").all() and (df[df.condition == "lora"].encoder != "").all()
    want = decoder_similarity(load_speechllm(tmp_path / "lora", with_encoder=False,
                                             adapter=False), None, TEXTS, "asr", "text",
                              "last", 3)["angular"]  # fmt: skip
    np.testing.assert_allclose(b.value, [want[r.layer, r.layer + r.n] for r in b.itertuples()])
    off = similarity_cell({**cell, "base_decoder": False}, sllm="l", input_type="text",
                          model_dir=str(tmp_path / "lora"), **kw)  # fmt: skip
    assert set(off.condition) == {"lora"}
    # a frozen-decoder SpeechLLM: speech is the frozen condition, text is the base decoder's
    sp = similarity_cell({**cell, "input": "speech"}, sllm="f", input_type="speech",
                         model_dir=str(tmp_path / "frozen"), **kw)  # fmt: skip
    assert set(sp.condition) == {"frozen"} and (sp.encoder != "").all()
    tx = similarity_cell(cell, sllm="f", input_type="text", model_dir=str(tmp_path / "frozen"),
                         **kw)  # fmt: skip
    assert set(tx.condition) == {"base"}
    np.testing.assert_allclose(tx.value.to_numpy(), df[df.condition == "base"].value.to_numpy())


def test_frozen_decoder_training_option_trains_the_projector_only(tmp_path):
    from workflow_scripts.speechllm.model import read_config, save_speechllm
    from workflow_scripts.speechllm.run import factors
    from workflow_scripts.speechllm.train import fit, trainable

    model, enc_src, dec_src = tiny_speechllm(tmp_path, lora=False)
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    proj = {k: v.clone() for k, v in model.projector.state_dict().items()}
    assert {id(p) for p in trainable(model)} == {id(p) for p in model.projector.parameters()}
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(10, 32, generator=g) for _ in TEXTS]
    spec = {"steps": 3, "batch_size": 2, "lr": 1e-2, "warmup_frac": 0.0, "seed": 0}
    fit(model, feats, TEXTS, spec, log=lambda _m: None)
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, model.projector.state_dict()[k]) for k, v in proj.items())
    save_speechllm(model, tmp_path / "frozen", enc_src, dec_src)
    assert read_config(tmp_path / "frozen")["lora"] is None
    assert not (tmp_path / "frozen" / "lora").exists()
    assert factors(str(tmp_path / "frozen"))["condition"] == "frozen"


def test_paper_config_has_the_three_conditions_and_two_target_languages():
    from workflow_scripts.speechllm.unseen import load_config

    cfg = load_config(["config/speechllm-paper.yaml"])
    models = cfg["speechllm"]["models"]
    frozen = [m for m, s in models.items() if s["train"]["lora"] is None]
    assert len(frozen) == 2 and len(models) - len(frozen) == 4
    assert plan.tasks(cfg) == ["asr", "st", "st_es"]
    assert all(set(plan.tasks(cfg)) <= set(s["train"]["prompts"]) for s in models.values())
    assert plan.cell_slice(cfg, task="st_es", input="text")["base_decoder"] is True
    assert "base_decoder" not in plan.cell_slice(cfg, task="st_es", input="speech")


# ----------------------------------------------------------------------------------------
# (c) a second target language
# ----------------------------------------------------------------------------------------
def test_spanish_translation_has_its_own_genders_and_switch_verbs():
    assert text.translate("marvin go left three steps", "es") == "marvin ve izquierda tres pasos"
    assert text.translate("follow the cat", "es") == "sigue el gato"  # German: die katze
    assert text.translate("follow the cat") == "folge die katze"
    assert text.translate("turn on the house", "es") == "enciende la casa"  # no particle last
    assert text.translate("turn off the bed", "es") == "apaga la cama"
    assert text.target_text("please go up", "st_es") == "por favor ve arriba"
    assert text.task_kind("st_es") == text.task_kind("st") == "st" != text.task_kind("asr")
    every = [s for t in text.TEMPLATES for s in text.template_sentences(t)]
    words = set(text.language_words("es"))
    assert all(set(text.translate(s, "es").split()) <= words for s in every)
    with pytest.raises(ValueError, match="target language"):
        text.translate("go left", "fr")


def test_tokenizer_and_pretraining_cover_a_second_language_only_when_asked(tmp_path):
    from workflow_scripts.speechllm.pretrain import pretrain_decoder
    from workflow_scripts.speechllm.tokenizer import build_tokenizer, load_tokenizer

    # the default is the shipped decoder's tokenizer exactly (its recipe still makes it)
    shipped = load_tokenizer("models/decoder-small")
    assert build_tokenizer().get_vocab() == shipped.get_vocab()
    assert "<st_es>" not in shipped.get_vocab() and "enciende" not in shipped.get_vocab()
    assert text.pretraining_formats({t: DEFAULT_PROMPTS[t] for t in ("asr", "st")}) == \
        ["en", "de", "asr", "st"]  # fmt: skip
    spec = {"layers": 2, "hidden": 16, "heads": 2, "ffn": 32, "steps": 2, "batch_size": 4,
            "lr": 1e-3, "tasks": ["asr", "st_es"]}  # fmt: skip
    out = pretrain_decoder(spec, TEXT_CFG, tmp_path / "dec", log=lambda _m: None)
    tok = load_tokenizer(out["partial_dir"])
    vocab = tok.get_vocab()
    assert "<st_es>" in vocab and "enciende" in vocab
    assert "schalte" not in vocab
    ids = tok(text.target_text("turn off the bed", "st_es"), add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids


def test_tasks_a_model_was_not_trained_for_are_refused():
    import copy

    import yaml

    from workflow_scripts import grid
    from workflow_scripts.core.config import ConfigError
    from workflow_scripts.core.provenance import REPO_ROOT

    cfg = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["speechllm"]["tasks"] = ["asr", "st_es"]
    with pytest.raises(ConfigError, match=r"speechllm-hubert: models/speechllm-hubert was "
                       r"trained for \['asr', 'st'\], not for \['st_es'\]"):  # fmt: skip
        grid.validate(bad)
    bad = copy.deepcopy(cfg)
    bad["speechllm"]["decoders"] = {"d": {"pretrain": {"layers": 2, "hidden": 8, "heads": 1}}}
    bad["speechllm"]["models"] = {
        "m": {"train": {"encoder": "hubert-small", "decoder": "d", "tasks": ["asr", "st", "st_es"]}}
    }
    with pytest.raises(ConfigError, match=r"models\.m\.train\.tasks: \['st_es'\] are not "
                       r"tasks of its decoder 'd'"):  # fmt: skip
        grid.validate(bad)


# ----------------------------------------------------------------------------------------
# The overlap table's labels
# ----------------------------------------------------------------------------------------
def _rows(model, task, inp, condition, D, encoder="hubert-small", decoder="decoder-small"):
    from test_speechllm_cells import _sim_rows

    enc = "" if condition == "base" else encoder
    return _sim_rows(model, task, inp, D, condition=condition, encoder=enc, decoder=decoder,
                     language="en")  # fmt: skip


def test_overlap_labels_pairs_by_condition_and_target_language():
    from test_speechllm_cells import two_block_distances

    D, E = two_block_distances()
    rows = (_rows("lora", "st", "speech", "lora", D) + _rows("lora", "st", "text", "lora", D)
            + _rows("lora", "st", "text", "base", E) + _rows("lora", "st_es", "speech", "lora", E)
            + _rows("frozen", "st", "speech", "frozen", D)
            + _rows("frozen", "st", "text", "base", E))  # fmt: skip
    blocks = report.redundant_blocks(pd.DataFrame(rows))
    at2 = blocks[blocks.n == 2]
    # the two SpeechLLMs' base blocks are one decoder's: one row, named by it, no encoder
    base = at2[at2.condition == "base"]
    assert base.model.tolist() == ["decoder-small"] and base.encoder.tolist() == [""]
    assert len(at2) == 5
    pairs = report.overlap_pairs(at2).set_index(["a", "b"]).factor.to_dict()
    assert pairs[("lora/st/speech/lora", "frozen/st/speech/frozen")] == "condition"  # Fig 1b-c
    assert pairs[("lora/st/text/lora", "decoder-small/st/text/base")] == "condition"
    assert pairs[("lora/st/speech/lora", "decoder-small/st/text/base")] == "condition+input"
    assert pairs[("lora/st/speech/lora", "lora/st_es/speech/lora")] == "language"
    assert pairs[("lora/st/speech/lora", "lora/st/text/lora")] == "input"
    t = report.overlap_table(blocks, 2).set_index("model")
    assert t.loc["across language", "mean_jaccard"] == pytest.approx(1 / 3)  # {1,2} vs {2,3}
    assert t.loc["across condition", "pairs"] == 2  # Fig. 1b vs 1c; text: LoRA vs base
    assert t.loc["across condition", "mean_jaccard"] == pytest.approx((1 + 1 / 3) / 2)
    assert t.loc["across condition+input", "pairs"] == 3  # e.g. Fig. 1a vs 1b, 1a vs 1c
    assert "condition" in t.columns and "across task" not in t.index
    asr = _rows("lora", "asr", "speech", "lora", D)
    b2 = report.redundant_blocks(pd.DataFrame(asr + _rows("lora", "st_es", "speech", "lora", D)))
    assert set(report.overlap_pairs(b2).factor) == {"task"}  # not "task+language"
    shown = report.display("overlap", report.overlap_table(blocks, 2))
    assert shown.loc[shown.model == "decoder-small", "layers"].tolist() == [[3, 4]]  # 1..L
