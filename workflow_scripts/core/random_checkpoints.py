"""What the two writers of real-size random-weight checkpoints share: the speech encoders of
:mod:`~workflow_scripts.backbones.architectures` (``make real-models``) and the LLM decoders of
:mod:`~workflow_scripts.speechllm.real_decoders` (``make real-decoders``), both described in
config/architectures.yaml.

Each writes ``<root>/<name>/``: a ``save_pretrained`` folder, a ``random_checkpoint.json``
saying what it is and the ``DONE`` marker written last, published by renaming a temp folder.
Only those two modules import this one (no workflow job loads it).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from workflow_scripts.core.files import apply_umask

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INFO = "random_checkpoint.json"
DONE = "DONE"


def hub_id_in(archs: Mapping[str, dict], name_or_hub_id: str, what: str) -> str:
    """The hub id in ``archs`` (hub id -> entry with a ``name``) of an entry given by hub id or
    short name; a KeyError ``unknown <what> ...`` listing the known ones otherwise."""
    if name_or_hub_id in archs:
        return name_or_hub_id
    for hub, entry in archs.items():
        if entry["name"] == name_or_hub_id:
            return hub
    names = [e["name"] for e in archs.values()]
    raise KeyError(f"unknown {what} {name_or_hub_id!r}; known: {names + list(archs)}")


def publish(out_dir: str | Path, hub: str, seed: int, dtype: str,
            write: Callable[[Path], dict]) -> Path:  # fmt: skip
    """Write a random checkpoint of ``hub`` to ``out_dir``: ``write(tmp)`` saves the model
    (and whatever goes with it) into a temp folder and returns what ``random_checkpoint.json``
    adds to the hub id, seed and dtype; ``DONE`` last, the umask's permissions, then the temp
    folder replaces ``out_dir``."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "hub_id": hub,
        "weights": "random (transformers' initialisation); not the pretrained checkpoint",
        "seed": seed,
        "dtype": dtype,
        **write(tmp),
        "architectures_file": "config/architectures.yaml",
    }
    (tmp / INFO).write_text(json.dumps(info, indent=1) + "\n")
    (tmp / DONE).write_text("complete\n")
    apply_umask(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def recorded_matches(out_dir: str | Path, hub: str, seed: int, dtype: str) -> dict | None:
    """The ``random_checkpoint.json`` of a finished folder (``DONE``) written for this hub id,
    seed and dtype; None when the folder is unfinished or was written for others."""
    out = Path(out_dir)
    if not (out / DONE).is_file() or not (out / INFO).is_file():
        return None
    info = json.loads((out / INFO).read_text())
    if (info.get("hub_id"), info.get("seed"), info.get("dtype")) != (hub, seed, dtype):
        return None
    return info


def write_all(root: str | Path, names: Iterable[str] | None, archs: Mapping[str, dict],
              hub_id_of: Callable[[str], str], is_current: Callable[..., bool],
              random_checkpoint: Callable[..., Path], seed: int, dtype: str,
              log: Callable[[str], object]) -> dict[str, Path]:  # fmt: skip
    """``random_checkpoint(hub, root/<name>, seed, dtype)`` of each named entry of ``archs``
    (``hub_id_of`` resolves a name; default: all), skipping folders that ``is_current``.
    Returns name -> folder."""
    out = {}
    for hub in [hub_id_of(n) for n in names] if names else list(archs):
        name = archs[hub]["name"]
        folder = Path(root) / name
        if is_current(folder, hub, seed, dtype):
            log(f"{folder}: current")
        else:
            log(f"{folder}: writing {hub} ({dtype}, seed {seed})")
            random_checkpoint(hub, folder, seed, dtype)
        out[name] = folder
    return out


def main(argv: list[str] | None, doc: str, write_all: Callable[..., object], what: str,
         default: str) -> int:  # fmt: skip
    """The command line of a writer: ``root [names ...] [--seed N] [--dtype D]``; ``doc``'s
    first paragraph is the description, ``what`` the folders written, ``default`` which are
    written without names."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("root", help=f"folder to write <name>/ {what} into (e.g. models/real)")
    ap.add_argument("names", nargs="*", help=f"short names or hub ids (default: {default})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    args = ap.parse_args(argv)
    write_all(args.root, args.names or None, args.seed, args.dtype)
    return 0
