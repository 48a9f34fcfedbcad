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

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from workflow_scripts.core.files import apply_umask
from workflow_scripts.core.resources import hub_architectures

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def hub_id_of(name_or_hub_id: str) -> str:
    """The hub id of an architecture given by hub id or short name (``wavlm-large``)."""
    archs = hub_architectures()
    if name_or_hub_id in archs:
        return name_or_hub_id
    for hub, entry in archs.items():
        if entry["name"] == name_or_hub_id:
            return hub
    names = [e["name"] for e in archs.values()]
    raise KeyError(f"unknown architecture {name_or_hub_id!r}; known: {names + list(archs)}")


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
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = random_model(hub, seed).to(DTYPES[dtype])
    model.save_pretrained(tmp, safe_serialization=True)
    info = {
        "hub_id": hub,
        "weights": "random (transformers' initialisation); not the pretrained checkpoint",
        "seed": seed,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "architectures_file": "config/architectures.yaml",
    }
    (tmp / "random_checkpoint.json").write_text(json.dumps(info, indent=1) + "\n")
    (tmp / "DONE").write_text("complete\n")
    apply_umask(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def is_current(out_dir: str | Path, hub_id: str, seed: int, dtype: str) -> bool:
    """``out_dir`` is a finished random checkpoint of this architecture, seed and dtype, with
    the architecture's current config (an edited config/architectures.yaml rewrites it)."""
    out = Path(out_dir)
    if not (out / "DONE").is_file() or not (out / "random_checkpoint.json").is_file():
        return False
    info = json.loads((out / "random_checkpoint.json").read_text())
    if (info.get("hub_id"), info.get("seed"), info.get("dtype")) != (hub_id, seed, dtype):
        return False
    saved = json.loads((out / "config.json").read_text())
    want = architecture_config(hub_id).to_dict()
    return all(saved.get(k) == want.get(k) for k in hub_architectures()[hub_id]["config"])


def write_all(root: str | Path, names: list[str] | None = None, seed: int = 0,
              dtype: str = "float16", log=print) -> dict[str, Path]:  # fmt: skip
    """``random_checkpoint`` of each named architecture (default: all) into ``root/<name>``,
    skipping folders that are already current. Returns name -> folder."""
    out = {}
    for hub in [hub_id_of(n) for n in names] if names else list(hub_architectures()):
        name = hub_architectures()[hub]["name"]
        folder = Path(root) / name
        if is_current(folder, hub, seed, dtype):
            log(f"{folder}: current")
        else:
            log(f"{folder}: writing {hub} ({dtype}, seed {seed})")
            random_checkpoint(hub, folder, seed, dtype)
        out[name] = folder
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder to write <name>/ checkpoints into (e.g. models/real)")
    ap.add_argument("names", nargs="*", help="short names or hub ids (default: all five)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    args = ap.parse_args(argv)
    write_all(args.root, args.names or None, args.seed, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
