"""config/site.yaml: machine settings read automatically (by the Snakefile and the SLURM
profile), git-ignored, under the command line's --config."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from helpers import ROOT, default_config, project_copy, rule_counts

from workflow_scripts.core import site


def test_site_file_is_git_ignored():
    proc = subprocess.run(["git", "check-ignore", "-q", "config/site.yaml"], cwd=ROOT)
    assert proc.returncode == 0


def test_setting_reads_env_then_file_then_default(tmp_path, monkeypatch):
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump({"slurm": {"partition": "gpu-a"}, "config": {"seed": 3}}))
    site.load.cache_clear()
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    assert site.setting("slurm.partition", "SBATCH_PARTITION", "", path=f) == "gpu-a"
    assert site.setting("slurm.account", "SBATCH_ACCOUNT", "none", path=f) == "none"
    monkeypatch.setenv("SBATCH_PARTITION", "from-env")
    assert site.setting("slurm.partition", "SBATCH_PARTITION", "", path=f) == "from-env"
    assert site.config_overrides(f) == {"seed": 3}
    f.write_text(yaml.safe_dump({"partition": "x"}))
    site.load.cache_clear()
    with pytest.raises(ValueError, match="unknown key"):
        site.load(f)
    site.load.cache_clear()


def test_slurm_profile_reads_partition_account_and_gres_from_the_site_file(tmp_path, monkeypatch):
    """The profile's expressions, evaluated as Snakemake does: the site file's values, an
    exported variable over them, and the --gres mode switched by `slurm.gres`."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.v9+.yaml").read_text())
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump({"slurm": {"partition": "gpu-a", "account": "proj", "gres": ""}}))
    monkeypatch.setattr(site, "SITE_FILE", f)
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "GPU_GRES"):
        monkeypatch.delenv(var, raising=False)

    def ev(expr):
        site.load.cache_clear()
        return eval(expr) if isinstance(expr, str) else expr

    res, gpu = profile["default-resources"], profile["set-resources"]["finetune"]
    assert (ev(res["slurm_partition"]), ev(res["slurm_account"])) == ("gpu-a", "proj")
    assert (ev(gpu["gpu"]), ev(gpu["gres"]), ev(gpu["cpus_per_task"])) == (1, "", 0)
    monkeypatch.setenv("SBATCH_ACCOUNT", "from-env")
    assert ev(res["slurm_account"]) == "from-env"
    f.write_text(yaml.safe_dump({"slurm": {"gres": "gpu:a100:1"}}))
    assert (ev(gpu["gpu"]), ev(gpu["gres"]), ev(gpu["cpus_per_task"])) == (0, "gpu:a100:1", 4)
    assert ev(res["slurm_partition"]) == ""
    site.load.cache_clear()


def test_every_rule_with_a_gpu_resource_gets_the_profiles_gpu_request():
    """A rule that may run on a GPU (a ``gpu=`` resource) is one of the SLURM profile's GPU
    jobs, so the --gres mode reaches it too (the SpeechLLM rules once were not)."""
    import re

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.v9+.yaml").read_text())
    gpu_rules = set()
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            if re.search(r"^\s+gpu=", block, flags=re.M):
                gpu_rules.add(block.split(":", 1)[0].strip())
    assert {"finetune", "speechllm_train", "speechllm_pruning"} <= gpu_rules
    jobs = profile["set-resources"]
    assert {r for r in gpu_rules if jobs.get(r, {}).get("gpu") != jobs["finetune"]["gpu"]} == set()
    assert gpu_rules <= set(profile["set-threads"])


@pytest.mark.slow
def test_snakefile_picks_up_the_site_file_under_the_command_line(tmp_path):
    d = project_copy(tmp_path, default_config())
    (d / "config/site.yaml").write_text(yaml.safe_dump({"config": {"outputs": ["manifest"]}}))
    assert set(rule_counts(d, "--forceall")) == {"synthesize_corpus", "manifest", "all"}
    # the command line still wins over the site file
    counts = rule_counts(d, "--forceall", "--config", "outputs=[manifest,baseline]")
    assert counts["finetune"] == len(default_config()["models"])


def test_site_example_is_valid_and_its_config_passes_the_schema():
    """Every key config/site.example.yaml shows is one the site file and the schema accept."""
    from workflow_scripts import grid
    from workflow_scripts.core.config import validate_config

    example = ROOT / "config/site.example.yaml"
    site.load.cache_clear()
    data = site.load(example)
    site.load.cache_clear()
    assert data["config"] and data["slurm"]
    cfg = grid.assemble(default_config(), site.config_overrides(example), {})
    site.load.cache_clear()
    assert validate_config(cfg)["data"]["root"] == data["config"]["data"]["root"]


def test_site_settings_win_over_shipped_grid_configs_but_not_over_config_args():
    """config.yaml < --configfile < config/site.yaml < --config: the site's data root and
    local model folders reach the paper grid without editing it; a model the grid does not
    have is never added by the site file."""
    import yaml

    from workflow_scripts import grid
    from workflow_scripts.preflight import SITE_PLACEHOLDER, check_data

    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    assert paper["data"]["root"] == SITE_PLACEHOLDER  # no machine's path in a tracked file
    site_cfg = {
        "data": {"root": "/scratch/sc"},
        "models": {"wavlm-large": {"hf": "/ckpt/wavlm-large"}, "other": {"hf": "/x"}},
    }
    cfg = grid.assemble(default_config(), site_cfg, paper)
    assert cfg["data"]["root"] == "/scratch/sc"
    assert cfg["models"]["wavlm-large"]["hf"] == "/ckpt/wavlm-large"
    assert set(cfg["models"]) == set(paper["models"])  # "other" not added
    cfg = grid.assemble(default_config(), site_cfg, paper, {"data": {"root": "/cli"}})
    assert cfg["data"]["root"] == "/cli"
    ok, msg = check_data(grid.assemble(default_config(), {}, paper))
    assert not ok and "data.root" in msg and "config/site.yaml" in msg
