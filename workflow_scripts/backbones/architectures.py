"""Real-size checkpoints with random weights, offline: the paper's five architectures
(config/architectures.yaml) as ``save_pretrained`` folders that the workflow loads through
the same ``hf:`` path as a downloaded checkpoint.

Each folder holds the base model (``Wav2Vec2Model`` / ``WavLMModel`` / ``HubertModel``) in
safetensors, its ``config.json``, a ``random_checkpoint.json`` saying what it is, and the
``DONE`` marker written last; :func:`load_classifier` adds a fresh keyword head, as for a real
pretrained backbone. Nothing is downloaded.

    python -m workflow_scripts.backbones.architectures models/real          # all five
    python -m workflow_scripts.backbones.architectures models/real wavlm-large --dtype float32
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from workflow_scripts.core import random_checkpoints
from workflow_scripts.core.random_checkpoints import DTYPES
from workflow_scripts.core.resources import hub_architectures


def hub_id_of(name_or_hub_id: str) -> str:
    """The hub id of an architecture given by hub id or short name (``wavlm-large``)."""
    return random_checkpoints.hub_id_in(hub_architectures(), name_or_hub_id, "architecture")


def architecture_config(hub_id: str):
    """The transformers config of ``hub_id``'s architecture (Wav2Vec2Config / WavLMConfig /
    HubertConfig) from config/architectures.yaml."""
    from transformers import AutoConfig

    keys = dict(hub_architectures()[hub_id_of(hub_id)]["config"])
    return AutoConfig.for_model(keys.pop("model_type"), **keys)


def random_model(hub_id: str, seed: int = 0):
    """The base model of ``hub_id``'s architecture, initialised as transformers initialises
    it (``_init_weights``) from ``torch.manual_seed(seed)``, in eval mode."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(architecture_config(hub_id)).eval()


def random_checkpoint(hub_id: str, out_dir: str | Path, seed: int = 0,
                      dtype: str = "float16") -> Path:  # fmt: skip
    """Write a randomly initialised ``save_pretrained`` folder (safetensors) of ``hub_id``'s
    architecture to ``out_dir``: into a temp folder, ``DONE`` last, then renamed, with the
    umask's permissions. ``dtype`` is the stored precision (float16 halves the size and the
    load time; the workflow loads every checkpoint in float32)."""
    hub = hub_id_of(hub_id)

    def write(tmp: Path) -> dict:
        model = random_model(hub, seed).to(DTYPES[dtype])
        model.save_pretrained(tmp, safe_serialization=True)
        return {"parameters": sum(p.numel() for p in model.parameters())}

    return random_checkpoints.publish(out_dir, hub, seed, dtype, write)


def is_current(out_dir: str | Path, hub_id: str, seed: int, dtype: str) -> bool:
    """``out_dir`` is a finished random checkpoint of this architecture, seed and dtype, with
    the architecture's current config (an edited config/architectures.yaml rewrites it)."""
    if random_checkpoints.recorded_matches(out_dir, hub_id, seed, dtype) is None:
        return False
    saved = json.loads((Path(out_dir) / "config.json").read_text())
    want = architecture_config(hub_id).to_dict()
    return all(saved.get(k) == want.get(k) for k in hub_architectures()[hub_id]["config"])


def write_all(root: str | Path, names: list[str] | None = None, seed: int = 0,
              dtype: str = "float16", log=print) -> dict[str, Path]:  # fmt: skip
    """``random_checkpoint`` of each named architecture (default: all) into ``root/<name>``,
    skipping folders that are already current. Returns name -> folder."""
    return random_checkpoints.write_all(
        root, names, hub_architectures(), hub_id_of, is_current, random_checkpoint, seed, dtype, log
    )


def main(argv: list[str] | None = None) -> int:
    return random_checkpoints.main(argv, __doc__, write_all, "checkpoints", "all five")


if __name__ == "__main__":
    sys.exit(main())
