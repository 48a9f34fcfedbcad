"""Shared fixtures: a tiny synthetic corpus and the default config's dry run, each made once per
test session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.pop("LAYER_REDUNDANCY_RESULTS", None)  # the developer's results root: not the tests'

# A complete (validated) corpus section: 9 identities (3 voices x 3 variants; f2 has espeak-ng's
# seeded breath noise), 16 sessions dealt 8/4/4, every augmentation of the default on.
TINY_CORPUS = {
    "speakers": 16,
    "repeats": 2,
    "seed": 3,
    "validation_percentage": 25,
    "testing_percentage": 25,
    "words": ["yes", "no", "up", "down"],
    "voices": ["en-us", "en-gb-scotland", "en-029"],
    "variants": ["", "m3", "f2"],
    "rate": [130, 220],
    "pitch": [10, 90],
    "pitch_range": [10, 90],
    "snr_db": [25, 40],
    "noise_types": ["white", "pink", "brown", "babble"],
    "reverb": {"prob": 0.5, "rt60": [0.15, 0.6], "drr_db": [2, 12]},
    "perturb": {"rate": 8, "pitch": 4, "speed": [0.9, 1.1], "snr_db": 3},
}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(root, cfg, summary) of a 16-speaker, 4-word, 2-repeat corpus."""
    from workflow_scripts.data.corpus import synthesize_corpus

    root = tmp_path_factory.mktemp("corpus") / "speech_commands_v0.02"
    summary = synthesize_corpus(root, TINY_CORPUS, progress=False)
    return root, TINY_CORPUS, summary


@pytest.fixture(scope="session")
def default_plan(tmp_path_factory):
    """rule -> job count of the default config's whole grid (``-n --forceall``), planned once
    in a copy of the project (so a developer's results/ does not change the count)."""
    from helpers import project_copy, rule_counts

    d = project_copy(tmp_path_factory.mktemp("default"))
    return rule_counts(d, "--forceall")
