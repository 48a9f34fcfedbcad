"""The SpeechLLM stage (issue 18) on tiny random models: the composed model, greedy decoding,
decoder-layer removal, angular-block selection, healing, WER/BLEU, the command language, and a
torch-free plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.speechllm import metrics, text
from workflow_scripts.speechllm.settings import DEFAULT_PROMPTS

TEXT_CFG = {"seed": 0, "heldout_share": 0.2, "heldout_max": 20}
TINY_DECODER = {"layers": 4, "hidden": 32, "heads": 4, "kv_heads": 2, "ffn": 64}


def tiny_encoder(tmp_path):
    """A 2-layer random HuBERT saved and loaded back (the registry's small config)."""
    from transformers import HubertModel

    from workflow_scripts.backbones.registry import small_config
    from workflow_scripts.speechllm.model import load_encoder

    torch.manual_seed(0)
    spec = {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64, "conv_dim": [16, 32, 32]}
    HubertModel(small_config("hubert", spec)).save_pretrained(tmp_path / "enc")
    return str(tmp_path / "enc"), load_encoder(str(tmp_path / "enc"))


def tiny_decoder(tmp_path, arch="llama"):
    """A random decoder of ``arch`` with the word-level tokenizer, saved and loaded back
    through ``AutoModelForCausalLM.from_pretrained``."""
    from workflow_scripts.speechllm.model import load_decoder
    from workflow_scripts.speechllm.pretrain import build_decoder
    from workflow_scripts.speechllm.tokenizer import build_tokenizer, load_tokenizer

    tok = build_tokenizer()
    folder = tmp_path / f"dec-{arch}"
    build_decoder({**TINY_DECODER, "arch": arch}, tok, seed=1).save_pretrained(folder)
    tok.save_pretrained(str(folder))
    return str(folder), load_decoder(str(folder)), load_tokenizer(str(folder))


def tiny_speechllm(tmp_path, arch="llama", lora=True, with_encoder=True):
    from workflow_scripts.speechllm.settings import resolve_train
    from workflow_scripts.speechllm.train import build_speechllm

    enc_src, enc = tiny_encoder(tmp_path)
    dec_src, dec, tok = tiny_decoder(tmp_path, arch)
    spec = resolve_train({"encoder": enc_src, "decoder": dec_src,
                          "projector": {"stack": 2, "kind": "mlp", "hidden": 16}})  # fmt: skip
    if not lora:
        spec["lora"] = None
    model = build_speechllm(spec, dec, tok, 32, DEFAULT_PROMPTS, enc if with_encoder else None)
    if lora:  # non-zero LoRA B, so the adapters change the output
        for name, p in model.decoder.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.eval(), enc_src, dec_src


def never_ending(dec_src: str) -> None:
    """Rewrite a tiny decoder folder so that greedy decoding never picks a special token (the
    end of sequence, or one that decodes to nothing; their output-embedding rows zeroed: logit
    0 while some word's logit is positive): a random model then writes max_new_tokens words
    that depend on its layers, instead of an empty hypothesis in every state."""
    from workflow_scripts.speechllm.model import load_decoder
    from workflow_scripts.speechllm.tokenizer import load_tokenizer

    dec = load_decoder(dec_src)
    special = load_tokenizer(dec_src).all_special_ids  # eos, and those decoding to nothing
    with torch.no_grad():
        dec.get_output_embeddings().weight[special] = 0.0
    dec.save_pretrained(dec_src)


def speech_world(tmp, sizes: dict[str, int]) -> dict[str, tuple[str, str]]:
    """A saved tiny SpeechLLM (``tmp/sllm``, decoder rewritten by :func:`never_ending`, so
    hypotheses are non-empty and differ between states) and, per split of ``sizes``, that many
    synthesized utterances with their features: {split: (features file, speech folder)}."""
    from helpers import TINY

    from workflow_scripts.core.config import validate_config
    from workflow_scripts.speechllm.model import save_speechllm
    from workflow_scripts.speechllm.run import write_features
    from workflow_scripts.speechllm.speech import synthesize_split

    model, enc_src, dec_src = tiny_speechllm(tmp)
    save_speechllm(model, tmp / "sllm", enc_src, dec_src)
    never_ending(dec_src)
    corpus = validate_config({"corpus": TINY["corpus"]})["corpus"]
    data = {}
    for split, n in sizes.items():
        synthesize_split(tmp / split, split, n, corpus, TEXT_CFG, 0, augment=False)
        write_features(str(tmp / "sllm"), str(tmp / split), str(tmp / f"{split}.st"))
        data[split] = (str(tmp / f"{split}.st"), str(tmp / split))
    return data


def waves(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal(int(s)).astype(np.float32) * 0.1 for s in rng.integers(6000, 12000, n)
    ]


# ----------------------------------------------------------------------------------------
# The command language and the metrics
# ----------------------------------------------------------------------------------------
def test_heldout_sentences_are_disjoint_from_training_and_cover_every_keyword():
    from workflow_scripts.data.corpus import SPEECH_COMMANDS_WORDS

    s = text.Sentences(TEXT_CFG)
    val, test = set(s.heldout_sentences("validation")), set(s.heldout_sentences("testing"))
    assert val and test and not val & test
    rng = np.random.default_rng(0)
    train = {s.draw("training", rng) for _ in range(3000)}
    assert not train & (val | test)
    words = {w for t in train for w in t.split()}
    assert set(SPEECH_COMMANDS_WORDS) <= words
    assert all(2 <= len(t.split()) <= 6 for t in train | val | test)
    assert text.Sentences(TEXT_CFG).heldout_sentences("testing") == s.heldout_sentences("testing")


def test_translation_uses_the_word_list_with_gender_and_separable_verbs():
    assert text.translate("marvin go left three steps") == "marvin geh links drei schritte"
    assert text.translate("follow the dog") == "folge der hund"
    assert text.translate("turn on the house") == "schalte das haus an"
    assert text.translate("the cat is happy") == "die katze ist froh"
    with pytest.raises(ValueError):
        text.translate("go home")


def test_wer_and_bleu_agree_with_hand_counts_and_sacrebleu():
    refs = ["marvin go left", "stop", "one two three four"]
    hyps = ["marvin go right", "stop", "one two four"]
    # 1 substitution + 1 deletion over 8 reference words
    assert metrics.wer(refs, hyps) == pytest.approx(2 / 8)
    assert metrics.wer(["a b"], [""]) == 1.0
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)
    # hand-made BLEU: one 4-word hypothesis vs 5-word reference, brevity penalty exp(1 - 5/4)
    b = metrics.bleu(["a b c d e"], ["a b c d"])
    assert b == pytest.approx(100 * np.exp(1 - 5 / 4), rel=1e-6)
    assert metrics.sentence_errors(refs, hyps) == pytest.approx(2 / 3)
    assert metrics.delta_wer(0.12, 0.10) == pytest.approx(0.2)
    assert metrics.delta_wer(0.02, 0.0) == np.inf


def test_tokenizer_round_trips_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from workflow_scripts.speechllm.tokenizer import build_tokenizer

    build_tokenizer().save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    s = "sheila geh rückwärts"
    ids = tok(f"<bos> {s} <eos>", add_special_tokens=False).input_ids
    assert len(ids) == 5 and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == s
    assert len(tok) < 160


def test_plan_imports_no_torch():
    code = "import sys, workflow_scripts.speechllm.plan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------
# The composed model
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_composed_logits_equal_a_manual_encoder_projector_decoder_pass(tmp_path, arch):
    model, _, _ = tiny_speechllm(tmp_path, arch)
    audio = waves(3)
    tgt = model.target_ids(["marvin go left", "stop", "one two three"])
    logits = model(model.features(audio), "asr", tgt).logits
    # by hand: each utterance alone, no padding
    emb = model.decoder.get_input_embeddings()
    before, after = model.prompt_ids("asr")
    assert model.tokenizer.convert_ids_to_tokens(before) == ["<bos>", "<speech>"]
    for i, wave in enumerate(audio):
        x = torch.from_numpy(wave)[None]
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        h = model.encoder(x, output_hidden_states=True).hidden_states[-1][0]
        h = torch.cat([h, h.new_zeros(h.shape[0] % 2, h.shape[1])])  # stack 2: pad to even
        speech = model.projector.net(h.reshape(h.shape[0] // 2, -1))
        ids = lambda v: emb(torch.tensor(v))  # noqa: E731
        seq = torch.cat([ids(before), speech, ids(after), ids(tgt[i])])[None]
        ref = model.decoder(inputs_embeds=seq).logits[0]
        got = logits[i, logits.shape[1] - seq.shape[1] :]  # left padding
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_save_and_load_round_trip_keeps_the_outputs(tmp_path):
    from workflow_scripts.speechllm.model import load_speechllm, save_speechllm

    model, enc_src, dec_src = tiny_speechllm(tmp_path)
    feats = model.features(waves(2))
    ref = model(feats, "st").logits
    save_speechllm(model, tmp_path / "sllm", enc_src, dec_src)
    for merge in (False, True):
        loaded = load_speechllm(tmp_path / "sllm", merge=merge)
        torch.testing.assert_close(loaded(loaded.features(waves(2)), "st").logits, ref,
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
    cfg = (tmp_path / "sllm" / "config.json").read_text()
    assert '"encoder": "../enc"' in cfg and '"decoder": "../dec-llama"' in cfg


def test_greedy_decoding_with_cache_matches_decoding_without(tmp_path):
    model, _, _ = tiny_speechllm(tmp_path, "qwen2")
    feats = model.features(waves(3))
    hyps = model.generate(feats, "asr", max_new_tokens=5)
    for i, f in enumerate(feats):  # one utterance at a time, full forward per step
        ids: list[int] = []
        for _ in range(5):
            logits = model([f], "asr", [ids] if ids else [[]]).logits[0, -1]
            ids.append(int(logits.argmax()))
            if ids[-1] == model.tokenizer.eos_token_id:
                break
        assert hyps[i] == model.decode_ids([ids])[0]


# ----------------------------------------------------------------------------------------
# Pruning and healing
# ----------------------------------------------------------------------------------------
def test_removing_zero_layers_reproduces_the_base_wer_and_removal_is_undone(tmp_path):
    from workflow_scripts.speechllm.model import decoder_layers, load_speechllm, save_speechllm
    from workflow_scripts.speechllm.pruning import remove_layers, removed_layers
    from workflow_scripts.speechllm.train import evaluate

    model, enc_src, dec_src = tiny_speechllm(tmp_path, "qwen2")
    save_speechllm(model, tmp_path / "sllm", enc_src, dec_src)
    model = load_speechllm(tmp_path / "sllm")
    feats = model.features(waves(4))
    texts = ["marvin go left", "stop", "one two three", "follow the dog"]
    refs, base = evaluate(model, feats, texts, "asr", batch_size=3, max_new_tokens=6)
    emb, mask, pos, _ = model.batch(feats, "asr")
    logits = model.decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits
    layers = list(decoder_layers(model.decoder))
    # a removal and its undoing leave the model exactly as it was: the same logits and the
    # same greedy hypotheses (the cache indices, num_hidden_layers and layer_types restored)
    # - while the removal itself changed them
    with removed_layers(model.decoder, [0, 2]):
        pruned_logits = model.decoder(inputs_embeds=emb, attention_mask=mask,
                                      position_ids=pos).logits  # fmt: skip
    assert not torch.allclose(pruned_logits, logits)
    after = model.decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(after, logits)
    _, same = evaluate(model, feats, texts, "asr", batch_size=3, max_new_tokens=6)
    assert same == base and metrics.wer(refs, same) == metrics.wer(refs, base)
    # removing zero layers by copy is the unpruned model too
    zero = type(model)(remove_layers(model.decoder, []), model.tokenizer, model.projector,
                       model.prompts)  # fmt: skip
    _, by_copy = evaluate(zero, feats, texts, "asr", batch_size=3, max_new_tokens=6)
    assert by_copy == base
    with removed_layers(model.decoder, [1, 2]):
        kept = decoder_layers(model.decoder)
        assert list(kept) == [layers[0], layers[3]] and model.decoder.config.num_hidden_layers == 2
        assert [m.self_attn.layer_idx for m in kept] == [0, 1]
        _, pruned = evaluate(model, feats, texts, "asr", batch_size=3, max_new_tokens=6)
        copy_ = remove_layers(model.decoder, [])  # a copy of the pruned model
    assert list(decoder_layers(model.decoder)) == layers
    assert [m.self_attn.layer_idx for m in layers] == [0, 1, 2, 3]
    assert model.decoder.config.num_hidden_layers == 4 and len(decoder_layers(copy_)) == 2
    # the same set removed by copy gives the same outputs as the in-place removal
    pruned_model = type(model)(remove_layers(model.decoder, [1, 2]), model.tokenizer,
                               model.projector, model.prompts)  # fmt: skip
    _, by_copy = evaluate(pruned_model, feats, texts, "asr", batch_size=3, max_new_tokens=6)
    assert by_copy == pruned


def test_angular_block_removes_the_block_with_the_smallest_distance():
    from workflow_scripts.speechllm.pruning import removal_plans

    L = 6
    rng = np.random.default_rng(0)
    # distances between states h_0..h_6; block 2..4 (h_2 -> h_5) made nearly the identity
    D = rng.uniform(0.3, 0.6, (L + 1, L + 1))
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0)
    D[2, 5] = D[5, 2] = 0.01  # n = 3: start 2
    D[3, 4] = D[4, 3] = 0.005  # n = 1: start 3
    [(seed, sets)] = removal_plans("angular_block", L, {"reduce": "last"}, {"angular": D})
    assert seed is None and sets[0] == [] and sets[1] == [3] and sets[3] == [2, 3, 4]
    # hand-made distances with a known answer at every n (no re-implementation of the
    # argmin): n = 2 has a tie between starts 1 and 4 (the lowest start wins) and a larger
    # distance at start 0 that an argmax would pick; n = 4, 5: the last and the first block
    E = np.full((L + 1, L + 1), 0.5)
    np.fill_diagonal(E, 0)
    E[0, 2] = 0.9
    E[1, 3] = E[4, 6] = 0.02
    E[2, 6] = 0.03
    E[0, 5] = 0.04
    for i, j in [(0, 2), (1, 3), (4, 6), (2, 6), (0, 5)]:
        E[j, i] = E[i, j]
    [(_, sets)] = removal_plans("angular_block", L, {"reduce": "last"}, {"angular": E})
    assert sets[2] == [1, 2] and sets[4] == [2, 3, 4, 5] and sets[5] == [0, 1, 2, 3, 4]
    # the overlap table's choice (report.redundant_blocks) is the one angular_block removes
    from workflow_scripts.speechllm.report import redundant_blocks
    from workflow_scripts.speechllm.similarity import distance_rows

    rows = [{"model": "m", "task": "asr", "input": "text", "metric": "angular", "n_layers": L,
             "value": r["distance"], "layer": r["layer"], "n": r["n"]}
            for r in distance_rows(E)]  # fmt: skip
    blocks = redundant_blocks(pd.DataFrame(rows))
    for b in blocks[blocks.n < L].itertuples():  # a removal keeps at least one layer
        assert b.blocks == sets[b.n], b.n
    bi = {"block_influence": np.array([0.5, 0.1, 0.4, 0.05, 0.3, 0.2])}
    [(_, order)] = removal_plans("block_influence", L, {}, bi)
    assert order[1] == [3] and order[2] == [1, 3] and order[3] == [1, 3, 5]
    [(_, back)] = removal_plans("backward", L, {}, None)
    assert back[2] == [4, 5]


def test_decoder_similarity_of_the_speech_and_text_inputs(tmp_path):
    from workflow_scripts.speechllm.similarity import decoder_similarity, distance_rows

    model, _, _ = tiny_speechllm(tmp_path)
    feats = model.features(waves(3))
    texts = ["marvin go left", "stop", "one two three"]
    for inp in ("speech", "text"):
        sim = decoder_similarity(model, feats, texts, "st", inp, "last", batch_size=2)
        A = sim["angular"]
        assert A.shape == (5, 5) and np.allclose(A, A.T) and np.all(np.diag(A) == 0)
        assert np.all((A >= 0) & (A <= 1)) and sim["block_influence"].shape == (4,)
        rows = distance_rows(A)
        assert len(rows) == 10  # (l, n) with l + n <= 4
    # batching does not change the result (left padding is masked out)
    one = decoder_similarity(model, feats, texts, "asr", "speech", "mean", batch_size=1)
    three = decoder_similarity(model, feats, texts, "asr", "speech", "mean", batch_size=3)
    np.testing.assert_allclose(one["angular"], three["angular"], atol=1e-5)
    np.testing.assert_allclose(one["block_influence"], three["block_influence"], atol=1e-5)


def test_healing_changes_only_the_lora_parameters(tmp_path):
    from workflow_scripts.speechllm.heal import heal
    from workflow_scripts.speechllm.model import decoder_layers, load_speechllm, save_speechllm
    from workflow_scripts.speechllm.settings import HEAL_DEFAULTS

    model, enc_src, dec_src = tiny_speechllm(tmp_path)
    save_speechllm(model, tmp_path / "sllm", enc_src, dec_src)
    model = load_speechllm(tmp_path / "sllm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats = model.features(waves(6, seed=1))
    texts = ["marvin go left", "stop", "one two three", "go up", "yes stop", "the cat is happy"]
    cfg = {**HEAL_DEFAULTS, "steps": 3, "batch_size": 4, "lr": 1e-2}
    healed = heal(model, [1], "asr", feats, texts, cfg)
    assert len(decoder_layers(healed.decoder)) == 3
    changed, lora = set(), set()
    pruned_names = {k.replace("layers.2.", "layers.1.").replace("layers.3.", "layers.2."): k
                    for k in before if "layers.1." not in k}  # fmt: skip
    for name, p in healed.named_parameters():
        if "lora_" in name:
            lora.add(name)
            continue
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        orig = pruned_names.get(plain)
        assert orig is not None, name
        if not torch.equal(p, before[orig]):
            changed.add(name)
    assert lora and not changed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input kept
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in healed.named_parameters()
               if "lora_B" in n)  # fmt: skip
    torch.rand(100)  # whatever the global RNG went through, healing is a function of its seed
    again = heal(model, [1], "asr", feats, texts, cfg)
    for (n, a), (_, b) in zip(healed.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_projector_kinds_downsample_by_the_stack():
    from workflow_scripts.speechllm.model import Projector

    for kind in ("linear", "mlp", "conv"):
        p = Projector(8, 6, stack=4, kind=kind, hidden=5)
        for frames in (1, 8, 9, 13):
            assert p(torch.randn(frames, 8)).shape == (-(-frames // 4), 6)
    with pytest.raises(ValueError):
        Projector(8, 6, stack=3, kind="conv")


def test_spoken_sentences_keep_the_identity_split(tmp_path):
    from helpers import TINY

    from workflow_scripts.core.config import validate_config
    from workflow_scripts.speechllm.speech import read_audio, read_manifest, synthesize_split

    cfg = validate_config({"corpus": TINY["corpus"]})["corpus"]
    ids = {}
    for split in ("training", "testing"):
        df = synthesize_split(tmp_path / split, split, 3, cfg, TEXT_CFG, 0, augment=True,
                              sessions=20)  # fmt: skip
        assert list(df.columns[:6]) == ["path", "text", "translation", "session", "identity",
                                        "split"]  # fmt: skip
        assert (df.translation == df.text.map(text.translate)).all()
        audio = read_audio(tmp_path / split, read_manifest(tmp_path / split))
        assert all(a.dtype == np.float32 and 0.3 < a.size / 16000 < 6 for a in audio)
        ids[split] = set(df.identity)
    assert not ids["training"] & ids["testing"]
    held = set(text.Sentences(TEXT_CFG).heldout_sentences("testing"))
    assert set(read_manifest(tmp_path / "testing").text) <= held
    again = synthesize_split(tmp_path / "again", "testing", 2, cfg, TEXT_CFG, 0, sessions=20)
    assert again.text.tolist() == read_manifest(tmp_path / "testing", 2).text.tolist()


# ----------------------------------------------------------------------------------------
# The shipped models
# ----------------------------------------------------------------------------------------
def test_shipped_models_are_what_config_pretrain_speechllm_yaml_makes():
    """models/ holds what config/pretrain_speechllm.yaml describes: each spec key matches the
    shipped provenance, the default config loads the SpeechLLMs through `hf:`, the folders are
    safetensors only and a few MB, and each SpeechLLM names its encoder and decoder folders."""
    import json

    import yaml

    from workflow_scripts.core.provenance import REPO_ROOT
    from workflow_scripts.speechllm.model import read_config, resolve, weights_sha256

    cfg = yaml.safe_load((REPO_ROOT / "config/pretrain_speechllm.yaml").read_text())["speechllm"]
    default = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())["speechllm"]
    for name, entry in cfg["decoders"].items():
        folder = REPO_ROOT / "models" / name
        prov = json.loads((folder / "provenance.json").read_text())
        assert (folder / "DONE").is_file() and (folder / "tokenizer.json").is_file()
        assert all(prov["pretrain_config"][k] == v for k, v in entry["pretrain"].items())
        # the text config it was pretrained with; the default's extra test sentences since
        # leave every training draw unchanged (tests/test_speechllm_heldout.py replays them)
        assert prov["text"] == {k: v for k, v in default["text"].items()
                                if k != "extra_test_sentences"}  # fmt: skip
    for name, entry in cfg["models"].items():
        folder = REPO_ROOT / "models" / name
        prov = json.loads((folder / "provenance.json").read_text())
        assert all(prov["train_config"][k] == v for k, v in entry["train"].items()), name
        assert default["models"][name]["hf"] == f"models/{name}"
        mc = read_config(folder)
        assert mc["decoder"] == "../decoder-small" and mc["encoder"].startswith("../")
        assert Path(resolve(mc["decoder"], folder)).is_dir()
        for key in ("encoder", "decoder"):  # the weights it was trained on are the shipped ones
            src = resolve(mc[key], folder)
            assert mc[f"{key}_weights_sha256"] == weights_sha256(src), (name, key)
    for folder in [REPO_ROOT / "models" / n for n in [*cfg["decoders"], *cfg["models"]]]:
        files = [f for f in folder.rglob("*") if f.is_file()]
        assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth")]
        assert sum(f.stat().st_size for f in files) < 6e6, folder
