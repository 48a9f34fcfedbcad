"""make preflight: data, checkpoints as safetensors in the HF cache, disk against the plan."""

from __future__ import annotations

import copy

from helpers import default_config

from workflow_scripts import preflight
from workflow_scripts.grid import validate


def test_data_check_names_what_is_missing(tmp_path):
    cfg = validate(copy.deepcopy(default_config()))
    assert preflight.check_data(cfg)[0]  # synthetic corpus: made by the workflow
    cfg["data"]["root"] = str(tmp_path / "nowhere")
    ok, text = preflight.check_data(cfg)
    assert not ok and "nowhere" in text
    root = tmp_path / "sc"
    for w in cfg["corpus"]["words"] or preflight_words(cfg):
        (root / w).mkdir(parents=True)
    cfg["data"]["root"] = str(root)
    ok, text = preflight.check_data(cfg)
    assert not ok and "validation_list.txt" in text
    (root / "validation_list.txt").write_text("")
    (root / "testing_list.txt").write_text("")
    assert preflight.check_data(cfg)[0]


def preflight_words(cfg):
    from workflow_scripts.data.plan import words

    return words(cfg)


def test_hub_checkpoints_must_be_cached_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    cfg = {"models": {"m": {"hf": "org/model"}, "local": {"hf": str(tmp_path / "absent")},
                      "small": {"pretrain": {}}}}  # fmt: skip
    checks = dict((text.split(":")[0], ok) for ok, text in preflight.check_models(cfg))
    assert checks == {"m": False, "small": True, "local": False}
    snap = tmp_path / "hub/models--org--model/snapshots/abc"
    snap.mkdir(parents=True)
    (snap / "pytorch_model.bin").write_text("x")  # a pickle only: still refused
    assert not preflight.check_models(cfg)[0][0]
    (snap / "model.safetensors").write_text("x")
    assert preflight.check_models(cfg)[0][0]


def test_default_config_passes(capsys):
    assert preflight.main(["--profile", "profiles/local"]) == 0
    out = capsys.readouterr().out
    assert "OK    config valid" in out and "disk: the" in out and "jobs to run need" in out
