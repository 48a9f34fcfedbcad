"""The SpeechLLM stage's names and defaults, torch-free (the plan and the torch modules share
them): decoder architectures, prompts, training and healing defaults, input types, strategies."""

from __future__ import annotations

#: Decoder architectures the small pretrained decoder can have (transformers config classes).
ARCHS = ("llama", "qwen2")
#: The prompts of the small decoder (tokens of its vocabulary); a template has one ``{speech}``.
DEFAULT_PROMPTS = {"asr": "<bos> <speech> {speech} </speech> <asr>",
                   "st": "<bos> <speech> {speech} </speech> <st>",
                   "st_es": "<bos> <speech> {speech} </speech> <st_es>"}  # fmt: skip
#: The tasks a small decoder's text pretraining covers unless its spec lists ``tasks`` (the
#: shipped decoder's: English, German and the asr / st prompts).
PRETRAIN_TASKS = ("asr", "st")

#: Training settings a ``train`` spec may leave out.
TRAIN_DEFAULTS = {
    "encoder_layer": -1,
    "tasks": ["asr", "st"],
    "projector": {"stack": 4, "kind": "mlp", "hidden": 512},
    "lora": {"r": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "prompts": None,
    "steps": 1000,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup_frac": 0.05,
    "seed": 0,
    "train_utterances": None,
}

#: Healing settings a config may leave out (``joint``: also one adapter per removal set trained
#: on every task at once; ``joint_removal_task``: whose removal sets it heals, null = the first
#: configured task).
HEAL_DEFAULTS = {"n": [], "steps": 60, "lr": 1e-3, "r": 8, "alpha": 16,
                 "targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "batch_size": 16,
                 "warmup_frac": 0.05, "seed": 0, "train_utterances": None, "joint": False,
                 "joint_removal_task": None, "strategies": None}  # fmt: skip
#: The healing budget: what a healed model and its n = 0 control share (the control's slice
#: holds only these, so listing another n reruns no control).
HEAL_BUDGET = ("steps", "lr", "r", "alpha", "targets", "batch_size", "warmup_frac", "seed",
               "train_utterances")  # fmt: skip
#: The healing cells: the healed n = 0 control (per SpeechLLM), joint healing (per strategy).
HEAL_CONTROL = "control"
HEAL_JOINT = "joint"

#: Similarity input types and the token reductions of the angular distance.
INPUTS = ("text", "speech")
REDUCE = ("last", "mean")

#: The strategies of the pruning registry this stage runs on decoder blocks, and those scored
#: on calibration utterances.
STRATEGIES = ("angular_block", "block_influence", "backward", "forward", "forward_backward",
              "random")  # fmt: skip
SCORED = ("angular_block", "block_influence")


def resolve_train(spec: dict) -> dict:
    """A ``train`` spec over :data:`TRAIN_DEFAULTS` (the projector's keys merged one by one)."""
    out = {**TRAIN_DEFAULTS, **spec}
    out["projector"] = {**TRAIN_DEFAULTS["projector"], **(spec.get("projector") or {})}
    return out
