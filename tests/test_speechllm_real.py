"""A real-size LLM decoder through every SpeechLLM stage of the workflow: Qwen2.5-0.5B's
architecture (config/architectures.yaml, `decoders`: 24 blocks, 896 wide, 14 query and 2
key-value heads, 151,936-token tied embeddings, RoPE theta 1e6, q/k/v biases; 494M parameters)
with random weights and the offline stand-in tokenizer (a small byte-level BPE with
Qwen2.5's `<|endoftext|>` at id 151643, no BOS token, padding with EOS), written as
`make real-decoders` writes it (models/real/qwen2.5-0.5b when current, else once here).

Behind the shipped small HuBERT encoder and the real decoders' text prompts (with a newline,
as config/speechllm-paper.yaml writes them), on a handful of utterances: SpeechLLM training
(projector + LoRA on q/v, two steps), the encoder features, both decoder-similarity inputs,
decoder pruning with WER over all 24 blocks (angular_block, scored on the validation
utterances), LoRA healing and the tables. Its numbers mean nothing (random weights, 2 steps);
the point is that the code a cluster runs on the real decoder executes at its size.
Llama-3.2-1B (1.24B parameters, 5 GB in float32) goes through the same code but is too heavy
for a test; docs/speechllm.md has how to run it. Opt-in: `REAL_SIZE_TESTS=1 make test` (CI
sets it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, TINY, default_config, project_copy, run_smk

from workflow_scripts.core import paths

# Minutes and ~6 GB on 2 cores: opt-in (REAL_SIZE_TESTS=1), which .ci/run sets, so CI runs it
# on every change while `make test` keeps its 10-minute budget here.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("REAL_SIZE_TESTS"),
        reason="a real-size decoder through every SpeechLLM stage; set REAL_SIZE_TESTS=1 "
        "(.ci/run does)",
    ),
]

HUB, NAME, SEED, DTYPE = "Qwen/Qwen2.5-0.5B", "qwen2.5-0.5b", 0, "float16"
LAYERS, HIDDEN, VOCAB, EOS = 24, 896, 151_936, 151_643
SLLM = "hubert-qwen"
PROMPT = "Speech: {speech}\nTranscribe the speech in English:"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    """The random Qwen2.5-0.5B folder: `make real-decoders`' when current (read only), else
    written here."""
    from workflow_scripts.speechllm.real_decoders import is_current, random_checkpoint

    shipped = ROOT / "models/real" / NAME
    if is_current(shipped, HUB, SEED, DTYPE):
        return shipped
    return random_checkpoint(HUB, tmp_path_factory.mktemp("real_decoders") / NAME, SEED, DTYPE)


def real_config(decoder: Path) -> dict:
    cfg = default_config()
    speechllm = {
        "speech": {"utterances": {"training": 4, "validation": 4, "testing": 2}},
        "models": {SLLM: {"train": {
            "encoder": "hubert-small", "decoder": str(decoder), "tasks": ["asr"],
            "prompts": {"asr": PROMPT}, "projector": {"stack": 8, "hidden": 64},
            "lora": {"r": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]},
            "steps": 2, "batch_size": 2}}},
        "tasks": ["asr"],
        "batch_size": 2,
        "max_new_tokens": 2,  # the prompt's pass and one step with the key-value cache
        "similarity": {"inputs": ["text", "speech"], "utterances": 2},
        "pruning": {"strategies": {"angular_block": {}}, "calibration_utterances": 2,
                    "heal": {"n": [1], "steps": 1, "batch_size": 2}},
        "overlap_n": 1,
    }  # fmt: skip
    cfg["models"].setdefault("hubert-small", {"hf": "models/hubert-small"})  # the encoder
    cfg.update(corpus=TINY["corpus"], outputs=["speechllm_pretrained", "speechllm"],
               pretrained_dir="results/speechllm_models", speechllm=speechllm)  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def results(decoder, tmp_path_factory) -> Path:
    d = project_copy(tmp_path_factory.mktemp("speechllm_real") / "proj", real_config(decoder))
    run_smk(d, "--profile", "profiles/local", timeout=600)
    return d / "results"


def test_the_decoder_is_the_architecture(decoder):
    from workflow_scripts.speechllm.model import load_decoder
    from workflow_scripts.speechllm.tokenizer import load_tokenizer

    cfg = json.loads((decoder / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"]) == ("qwen2", 24, 896)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (14, 2)
    assert cfg["vocab_size"] == VOCAB and cfg["tie_word_embeddings"] is True
    assert cfg["rope_parameters"]["rope_theta"] == 1e6
    tok = load_tokenizer(decoder)
    assert tok.bos_token_id is None and tok.eos_token_id == tok.pad_token_id == EOS
    assert tok("go left").input_ids == tok("go left", add_special_tokens=False).input_ids  # no BOS
    assert tok.decode(tok(" schalte das haus an").input_ids) == " schalte das haus an"
    model = load_decoder(decoder)
    emb = model.get_input_embeddings().weight
    assert tuple(emb.shape) == (VOCAB, HIDDEN) and emb.dtype.is_floating_point
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # tied, as the real checkpoint
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2: q/k/v biases
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 494_032_768) / 494_032_768 < 1e-3, params


def test_training_features_and_similarity_at_real_size(results):
    model = results / "speechllm_models" / SLLM
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["projector"]["out_dim"] == HIDDEN and cfg["prompts"] == {"asr": PROMPT}
    assert (model / "lora" / "adapter_model.safetensors").is_file()
    loss = json.loads((model / "loss_history.json").read_text())
    assert len(loss) == 2 and all(math.isfinite(h["loss"]) for h in loss)
    for split in ("training", "validation", "testing"):
        feats = paths.path("speechllm_features", str(results), sllm=SLLM, split=split)
        assert Path(feats).is_file(), split
    for inp in ("text", "speech"):
        sim = pd.read_parquet(paths.path("speechllm_similarity_cell", str(results), sllm=SLLM,
                                         task="asr", input=inp))  # fmt: skip
        assert set(sim["n_layers"]) == {LAYERS} and sim["value"].notna().all(), inp
        ang = sim[sim["metric"] == "angular"]
        assert ang["layer"].max() == LAYERS - 1 and ang["n"].max() == LAYERS


def test_pruning_with_wer_over_every_block_and_healing(results):
    cell = pd.read_parquet(paths.path("speechllm_pruning_cell", str(results), sllm=SLLM,
                                      task="asr", strategy="angular_block"))  # fmt: skip
    assert sorted(cell["n_removed"]) == list(range(LAYERS))
    assert set(cell["n_layers"]) == {LAYERS} and cell["wer"].map(math.isfinite).all()
    # the decoder's parameters fall by one block per removed block (embeddings tied: once)
    params = cell.sort_values("n_removed")["decoder_params"].to_numpy()
    block = params[0] - params[1]
    assert block > 0 and all(params[:-1] - params[1:] == block)
    healed = cell[cell["healed"]]
    assert list(healed["n_removed"]) == [1] and healed["healed_wer"].map(math.isfinite).all()
    records = pd.read_parquet(paths.path("speechllm_pruning_records", str(results), sllm=SLLM,
                                         task="asr", strategy="angular_block"))  # fmt: skip
    assert len(records[~records["healed"]]) == 2 * LAYERS  # 2 test utterances per removal set


def test_tables_read_the_real_decoder(results):
    tables = paths.tables("speechllm", str(results))
    for f in tables.values():
        assert Path(f).is_file(), f
    prun = pd.read_parquet(tables["pruning"])
    assert set(prun["model"]) == {SLLM} and prun["n_layers"].max() == LAYERS
