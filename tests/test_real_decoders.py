"""The real LLM decoders of config/speechllm-paper.yaml written offline (config/architectures.yaml,
`decoders`; workflow_scripts/speechllm/real_decoders.py, `make real-decoders`): the published
architecture values, the parameter counts transformers builds from them, the stand-in
tokenizers' special tokens and conventions, and a shrunk Llama-3.2 written, found current,
loaded through the SpeechLLM code and decoded with. tests/test_speechllm_real.py runs the
real-size Qwen2.5-0.5B through the workflow."""

from __future__ import annotations

import json

import pytest
import torch

from workflow_scripts.core import gpu_memory, resources
from workflow_scripts.speechllm import real_decoders

QWEN, LLAMA = "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B"
# hub id -> name, layers, hidden, heads, kv heads, ffn, vocab, rope theta, parameters (the
# published counts: Qwen2.5-0.5B 0.49B incl. q/k/v biases, Llama-3.2-1B 1.24B; tied embeddings)
PUBLISHED = {
    QWEN: ("qwen2.5-0.5b", 24, 896, 14, 2, 4864, 151_936, 1e6, 494_032_768),
    LLAMA: ("llama3.2-1b", 16, 2048, 32, 8, 8192, 128_256, 5e5, 1_235_814_400),
}
SENTENCES = ["sheila go left three steps", "turn on the house", "schalte das haus an",
             "geh rückwärts fünf schritte"]  # fmt: skip


def test_the_published_architectures():
    from transformers import AutoModelForCausalLM

    archs = resources.decoder_architectures()
    assert set(archs) == set(PUBLISHED) and not set(archs) & set(resources.hub_architectures())
    for hub, (name, layers, hidden, heads, kv, ffn, vocab, theta, params) in PUBLISHED.items():
        assert archs[hub]["name"] == name
        cfg = real_decoders.decoder_config(hub)
        assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == (
                layers, hidden, heads, kv, ffn, vocab)  # fmt: skip
        assert cfg.rope_parameters["rope_theta"] == theta and cfg.tie_word_embeddings
        with torch.device("meta"):  # no memory
            count = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        assert count == params, (hub, count)
        est = gpu_memory.decoder(hub)["params"]  # the planner's estimate (no q/k/v biases)
        assert abs(est - count) / count < 1e-3 and gpu_memory.decoder(hub)["kv_heads"] == kv
    qwen, llama = real_decoders.decoder_config(QWEN), real_decoders.decoder_config(LLAMA)
    assert set(qwen.layer_types) == {"full_attention"} and qwen.sliding_window is None
    rope = llama.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == (
        "llama3", 32.0, 8192)  # fmt: skip
    assert llama.head_dim == 64


@pytest.mark.parametrize("hub", [QWEN, LLAMA])
def test_stand_in_tokenizers(hub, tmp_path):
    """The real special tokens at their real ids; Llama 3 prepends its BOS when encoding with
    special tokens and has no padding token, Qwen2.5 has no BOS and pads with its EOS; loaded
    with AutoTokenizer beside the model's config.json, it encodes as built; ids it does not
    know (most of a real-size LM head's) decode to nothing."""
    from workflow_scripts.speechllm.tokenizer import load_tokenizer

    tok = real_decoders.stand_in_tokenizer(hub)
    spec = resources.decoder_architectures()[hub]["tokenizer"]
    for token, i in spec["specials"].items():
        assert tok.convert_tokens_to_ids(token) == i
    real_decoders.decoder_config(hub).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    eos = spec["specials"][spec["eos"]]
    assert loaded.eos_token_id == eos and loaded.pad_token_id == eos  # Llama: pads with EOS
    for s in SENTENCES + ["Speech:\nTranscribe the speech in English:"]:
        ids = loaded(s, add_special_tokens=False).input_ids
        assert ids == tok(s, add_special_tokens=False).input_ids and max(ids) < 1000
        assert loaded.decode(ids) == s
        with_special = loaded(s).input_ids
        assert with_special == ([128_000] + ids if hub == LLAMA else ids)
    assert loaded.bos_token_id == (128_000 if hub == LLAMA else None)
    assert loaded.decode([100_000, 5_000, eos], skip_special_tokens=True) == ""


@pytest.fixture
def small_llama(monkeypatch):
    """Llama-3.2's entry (llama3 RoPE, real vocabulary and specials) with 3 blocks of 64."""
    entry = json.loads(json.dumps(resources.decoder_architectures()[LLAMA]))
    entry["config"].update(num_hidden_layers=3, hidden_size=64, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
    monkeypatch.setattr(real_decoders, "decoder_architectures", lambda: {LLAMA: entry})
    return entry


def test_written_current_and_usable_by_the_speechllm(small_llama, tmp_path):
    from workflow_scripts.speechllm.model import decoder_layers, load_decoder
    from workflow_scripts.speechllm.pruning import removed_layers
    from workflow_scripts.speechllm.settings import resolve_train
    from workflow_scripts.speechllm.similarity import decoder_similarity
    from workflow_scripts.speechllm.tokenizer import load_tokenizer
    from workflow_scripts.speechllm.train import build_speechllm

    logs = []
    folder = real_decoders.write_all(tmp_path, ["llama3.2-1b"], log=logs.append)["llama3.2-1b"]
    assert folder == tmp_path / "llama3.2-1b" and (folder / "DONE").is_file()
    info = json.loads((folder / "random_checkpoint.json").read_text())
    assert (info["hub_id"], info["dtype"], info["vocab_size"]) == (LLAMA, "float16", 128_256)
    assert real_decoders.is_current(folder, LLAMA)
    assert not real_decoders.is_current(folder, LLAMA, seed=1)
    real_decoders.write_all(tmp_path, log=logs.append)
    assert logs[-1].endswith(": current")
    small_llama["config"]["rms_norm_eps"] = 1e-6  # an edited architecture is rewritten
    assert not real_decoders.is_current(folder, LLAMA)
    small_llama["config"]["rms_norm_eps"] = 1e-5

    decoder, tok = load_decoder(folder), load_tokenizer(folder)
    assert decoder.dtype == torch.float32 and decoder.config.pad_token_id is None
    prompt = "Speech: {speech}\nTranscribe the speech in English:"
    lora = {"r": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]}
    spec = resolve_train({"encoder": "e", "decoder": "d", "tasks": ["asr"],
                          "projector": {"stack": 4, "hidden": 16}, "lora": lora})  # fmt: skip
    model = build_speechllm(spec, decoder, tok, 8, {"asr": prompt}).eval()
    before, after = model.prompt_ids("asr")
    assert before[0] == 128_000 and before[1:] == tok("Speech:", add_special_tokens=False).input_ids
    assert after == tok("\nTranscribe the speech in English:", add_special_tokens=False).input_ids
    torch.manual_seed(0)
    feats = [torch.randn(13, 8), torch.randn(7, 8)]
    hyps = model.generate(feats, "asr", max_new_tokens=3)
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)
    sim = decoder_similarity(model, feats, SENTENCES[:2], "asr", "speech")
    assert sim["angular"].shape == (4, 4) and sim["block_influence"].shape == (3,)
    with removed_layers(model.decoder, [0, 2]):
        assert len(decoder_layers(model.decoder)) == 1
        assert len(model.generate(feats, "asr", max_new_tokens=3)) == 2
    assert len(decoder_layers(model.decoder)) == 3
