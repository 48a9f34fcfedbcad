"""Resumable training checkpoints shared by pretraining and fine-tuning.

A checkpoint folder holds the model weights (safetensors), the optimizer state (loaded with
``weights_only=True``), and ``state.json`` (step, numpy RNG state, loss history, and the hash
of the settings that made it). It is written to a temp folder and renamed, so a killed save
never leaves a half checkpoint; one made with other settings is discarded, not resumed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.core.files import apply_umask


def save_checkpoint(path: Path, model, opt, step: int, rng: np.random.Generator, history: list,
                    spec_hash: str) -> None:  # fmt: skip
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    state = {"step": step, "rng": rng.bit_generator.state, "history": history,
             "spec_hash": spec_hash}  # fmt: skip
    (tmp / "state.json").write_text(json.dumps(state))
    apply_umask(tmp)  # safetensors writes 0600: the umask's permissions, as every result
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def resume_checkpoint(path: Path, model, opt, rng: np.random.Generator, spec_hash: str,
                      log=print) -> tuple[int, list]:  # fmt: skip
    """Load ``path`` into model/optimizer/rng if it was made with ``spec_hash``; returns
    (start step, history), (0, []) when there is nothing to resume."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        return 0, []
    state = json.loads((path / "state.json").read_text())
    if state.get("spec_hash") != spec_hash:
        log("discarding a checkpoint made with other settings")
        shutil.rmtree(path)
        return 0, []
    model.load_state_dict(load_file(path / "model.safetensors"))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng.bit_generator.state = state["rng"]
    log(f"resuming from step {state['step']}")
    return state["step"], state["history"]
