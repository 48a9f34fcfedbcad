"""The SpeechLLM stage through Snakemake on a tiny grid: speech, a pretrained decoder, a trained
SpeechLLM, its features, the cells and the tables, with provenance; then nothing left to do;
and the paper's SpeechLLM grid (config/speechllm-paper.yaml) planned with GPUs under SLURM."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml
from helpers import ROOT, TINY, default_config, job_blocks, project_copy, run_smk

from workflow_scripts.core import paths
from workflow_scripts.core.provenance import read_provenance

TINY_SPEECHLLM = {
    "speech": {"utterances": {"training": 8, "validation": 6, "testing": 4}},
    "decoders": {"dec": {"pretrain": {"layers": 3, "hidden": 16, "heads": 2, "ffn": 32,
                                      "steps": 3, "batch_size": 4}}},
    "models": {"tiny": {"train": {"encoder": "hubert-small", "decoder": "dec",
                                  "tasks": ["asr", "st"], "projector": {"hidden": 16},
                                  "steps": 3, "batch_size": 4}}},
    "tasks": ["asr", "st"],
    "batch_size": 4,
    "max_new_tokens": 3,
    "pruning": {"strategies": {"angular_block": {}, "backward": {}},
                # healing at n = 1, its n = 0 control, joint healing (the sweep's prefix rule:
                # tests/test_speechllm_healing.py)
                "heal": {"n": [1], "steps": 2, "batch_size": 4, "joint": True}},
    "overlap_n": 1,
}  # fmt: skip


@pytest.mark.slow
def test_tiny_speechllm_grid_end_to_end(tmp_path):
    cfg = default_config()
    cfg["models"].setdefault("hubert-small", {"hf": "models/hubert-small"})  # the encoder
    cfg.update(corpus=TINY["corpus"], outputs=["speechllm_pretrained", "speechllm"],
               pretrained_dir="results/speechllm_models", speechllm=TINY_SPEECHLLM)  # fmt: skip
    d = project_copy(tmp_path / "proj", cfg)
    run_smk(d, "--profile", "profiles/local", "--cores", "2", timeout=600)
    res = d / "results"
    assert (res / "speechllm_models/dec/DONE").is_file()
    model = res / "speechllm_models/tiny"
    assert (model / "projector.safetensors").is_file() and (model / "lora").is_dir()
    tables = {k: d / v for k, v in paths.tables("speechllm").items()}
    for f in tables.values():
        assert f.is_file(), f
    prun = pd.read_parquet(tables["pruning"])
    assert set(prun.strategy) == {"angular_block", "backward"} and set(prun.task) == {"asr", "st"}
    assert prun.groupby("strategy").n_removed.max().tolist() == [2, 2]  # L = 3
    assert prun[prun.n_removed == 1].healed.all() and not prun[prun.n_removed == 2].healed.any()
    # healing against its n = 0 control, per task and jointly, removable after healing
    for healing in ("control", "joint-angular_block", "joint-backward"):
        for f in ("speechllm_heal_cell", "speechllm_heal_records"):
            assert (d / paths.path(f, str(res), sllm="tiny", healing=healing)).is_file()
    heal = pd.read_csv(tables["healing_csv"])
    assert len(heal) == 2 * 2 * 2 * 1  # tasks x strategies x (task, joint) x n = 1
    assert heal.control_wer_pct.notna().all() and heal.delta_wer_control.notna().all()
    summary = pd.read_csv(tables["summary_csv"])
    assert (summary.healed_upto == 1).all()
    for col in ("max_removed_healed_prefix", "max_removed_joint_prefix"):
        assert summary[col].between(0, 1).all() and summary[f"{col}_ci"].between(0, 1).all()
    sim = pd.read_parquet(tables["similarity"])
    assert set(sim.input) == {"text", "speech"} and sim.value.notna().all()
    cell = paths.path("speechllm_pruning_cell", str(res), sllm="tiny", task="st",
                      strategy="backward")  # fmt: skip
    prov = read_provenance(cell)
    assert prov["rule"] == "speechllm_pruning" and '"strategy":"backward"' in prov["config_slice"]
    # everything is current: a second run plans no job
    out = run_smk(d, "-n", "--profile", "profiles/local").stdout
    assert "Nothing to be done" in out or not job_blocks(out)


def test_paper_speechllm_dry_run_plans_the_grid_with_gpus():
    paper = yaml.safe_load((ROOT / "config/speechllm-paper.yaml").read_text())["speechllm"]
    proc = run_smk(ROOT, "-n", "--forceall", "--profile", "slurm", "--configfile",
                   "config/speechllm-paper.yaml", timeout=300)  # fmt: skip
    jobs = job_blocks(proc.stdout + proc.stderr)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["rule"]] = counts.get(j["rule"], 0) + 1
    m, t = len(paper["models"]), len(paper["tasks"])
    inputs, strategies = len(paper["similarity"]["inputs"]), len(paper["pruning"]["strategies"])
    assert counts == {"speechllm_speech": 3, "speechllm_train": m, "speechllm_features": 3 * m,
                      "speechllm_similarity": m * t * inputs,
                      "speechllm_pruning": m * t * strategies,
                      "speechllm_heal": m * (1 + strategies),  # control, joint per strategy
                      "speechllm_tables": 1}  # fmt: skip
    for j in jobs:
        gpu = j["resources"].get("gpu", "0")
        assert gpu == ("0" if j["rule"] in ("speechllm_speech", "speechllm_tables") else "1"), j
    seen = {re.search(r"sllm=([^,]+)", j["wildcards"]).group(1)
            for j in jobs if "sllm=" in j["wildcards"]}  # fmt: skip
    assert seen == set(paper["models"])  # the paper's models replace config.yaml's
