"""Real-size LLM decoders with random weights, offline: the two decoders of
config/speechllm-paper.yaml (``Qwen/Qwen2.5-0.5B``, ``meta-llama/Llama-3.2-1B``; the
``decoders`` section of config/architectures.yaml) as ``save_pretrained`` folders that a
SpeechLLM ``train`` spec names as its ``decoder``, loaded through the same
``AutoModelForCausalLM`` / ``AutoTokenizer`` path as a downloaded checkpoint.

Each folder holds the causal LM (float16 safetensors by default; the SpeechLLM jobs load it in
float32), its ``config.json`` and ``generation_config.json``, the stand-in tokenizer
(:func:`~workflow_scripts.speechllm.tokenizer.build_bpe_tokenizer`: a small byte-level BPE with
the real special tokens at their real ids; the embedding matrix keeps the real vocabulary
size), a ``random_checkpoint.json`` saying what it is, and the ``DONE`` marker written last.
Nothing is downloaded.

    python -m workflow_scripts.speechllm.real_decoders models/real                 # both
    python -m workflow_scripts.speechllm.real_decoders models/real qwen2.5-0.5b
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from workflow_scripts.core import random_checkpoints
from workflow_scripts.core.random_checkpoints import DTYPES
from workflow_scripts.core.resources import decoder_architectures

#: config.json keys that are not the architecture (compared by :func:`is_current`).
NOT_ARCHITECTURE = ("transformers_version", "dtype", "torch_dtype", "_name_or_path",
                    "architectures")  # fmt: skip


def hub_id_of(name_or_hub_id: str) -> str:
    """The hub id of a decoder given by hub id or short name (``qwen2.5-0.5b``)."""
    return random_checkpoints.hub_id_in(decoder_architectures(), name_or_hub_id, "decoder")


def decoder_config(hub_id: str):
    """The transformers config (``Qwen2Config`` / ``LlamaConfig``) of a decoder's published
    architecture keys."""
    from transformers import AutoConfig

    keys = dict(decoder_architectures()[hub_id_of(hub_id)]["config"])
    return AutoConfig.for_model(keys.pop("model_type"), **keys)


def random_decoder(hub_id: str, seed: int = 0, dtype: str = "float16"):
    """The causal LM of ``hub_id``'s architecture, initialised as transformers initialises it
    from ``torch.manual_seed(seed)``, directly in ``dtype`` (a 1.2B model in float32 would
    need 5 GB only to be halved), in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(decoder_config(hub_id), dtype=DTYPES[dtype])
    return model.eval()


def stand_in_tokenizer(hub_id: str):
    """The offline stand-in tokenizer of a decoder (see the module docstring)."""
    from workflow_scripts.speechllm.tokenizer import build_bpe_tokenizer

    return build_bpe_tokenizer(decoder_architectures()[hub_id_of(hub_id)]["tokenizer"])


def random_checkpoint(hub_id: str, out_dir: str | Path, seed: int = 0,
                      dtype: str = "float16") -> Path:  # fmt: skip
    """Write a random-weight ``save_pretrained`` folder of ``hub_id``'s decoder and its stand-in
    tokenizer to ``out_dir``: into a temp folder, ``DONE`` last, then renamed, with the
    umask's permissions."""
    hub = hub_id_of(hub_id)
    entry = decoder_architectures()[hub]

    def write(tmp: Path) -> dict:
        model = random_decoder(hub, seed, dtype)
        model.save_pretrained(tmp)
        tokenizer = stand_in_tokenizer(hub)
        tokenizer.save_pretrained(tmp)
        return {
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": model.config.vocab_size,
            "tokenizer": {
                "kind": "stand-in byte-level BPE trained offline (speechllm/tokenizer.py); "
                "not the real tokenizer",
                "tokens": len(tokenizer),
                **entry["tokenizer"],
            },
        }

    return random_checkpoints.publish(out_dir, hub, seed, dtype, write)


def is_current(out_dir: str | Path, hub_id: str, seed: int = 0, dtype: str = "float16") -> bool:
    """``out_dir`` is a finished random checkpoint of this decoder, seed and dtype, with the
    current architecture and tokenizer spec (an edited config/architectures.yaml rewrites it)."""
    from transformers import AutoConfig

    hub = hub_id_of(hub_id)
    info = random_checkpoints.recorded_matches(out_dir, hub, seed, dtype)
    if info is None:
        return False
    spec = decoder_architectures()[hub]["tokenizer"]
    if any((info.get("tokenizer") or {}).get(k) != v for k, v in spec.items()):
        return False
    saved = AutoConfig.from_pretrained(str(out_dir)).to_dict()
    want = decoder_config(hub).to_dict()
    return all(saved.get(k) == v for k, v in want.items() if k not in NOT_ARCHITECTURE)


def write_all(root: str | Path, names: list[str] | None = None, seed: int = 0,
              dtype: str = "float16", log=print) -> dict[str, Path]:  # fmt: skip
    """``random_checkpoint`` of each named decoder (default: both) into ``root/<name>``,
    skipping folders that are already current. Returns name -> folder."""
    archs = decoder_architectures()
    return random_checkpoints.write_all(
        root, names, archs, hub_id_of, is_current, random_checkpoint, seed, dtype, log
    )


def main(argv: list[str] | None = None) -> int:
    return random_checkpoints.main(argv, __doc__, write_all, "decoders", "both")


if __name__ == "__main__":
    sys.exit(main())
