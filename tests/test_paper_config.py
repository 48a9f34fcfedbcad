"""The paper's grid as a config (config/paper.yaml) through the SLURM profile: a dry run from
the repository root, offline and without the real data, plans exactly the grid's jobs, with
a GPU for the GPU rules only; and the model-size-aware resources behind those requests."""

from __future__ import annotations

import re

import pytest
import yaml
from helpers import ROOT, job_blocks, run_smk

from workflow_scripts.core import resources

PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
GPU_RULES = {"pretrain_backbone", "finetune", "hidden_cache", "pruning_cell", "mimic_cell",
             "structured_cell"}  # fmt: skip


def dry_run(*args: str) -> str:
    proc = run_smk(ROOT, "-n", "--forceall", *args, timeout=300)
    return proc.stdout + proc.stderr


planned = job_blocks


@pytest.fixture(scope="module")
def paper_jobs():
    # the README's command: the `slurm` profile name resolved from the repository root
    assert (ROOT / "slurm").is_symlink() and (ROOT / "slurm/config.v9+.yaml").is_file()
    return planned(dry_run("--profile", "slurm", "--configfile", "config/paper.yaml"))


def test_paper_dry_run_plans_exactly_the_grid(paper_jobs):
    models = PAPER["models"]
    n = len(models)
    metrics = PAPER["similarity"]["metrics"]
    strategies = PAPER["pruning"]["strategies"]
    mimickers = sum(len(t["depths"]) for t in PAPER["mimic"]["types"].values())
    mimickers += bool(PAPER["mimic"]["no_mimic"])
    expected = {
        "manifest": 1,
        "finetune": n,
        "hidden_cache": 3 * n,  # validation (similarity), training + testing (mimickers)
        "similarity_cell": n * len(metrics),
        "similarity_tables": 1,
        "pruning_cell": n * len(strategies),
        "pruning_tables": 1,
        "mimic_cell": n * mimickers,
        "mimic_tables": 1,
        # depth-2 mimickers read their own model's blocks of the targets' metric
        "model_groups": n if any(2 in t["depths"] for t in PAPER["mimic"]["types"].values()) else 0,
        "structured_cell": n * len(PAPER["structured"]["targets"]),
        "structured_tables": 1,
        "baseline_tables": 1,
        "overview": 1,
    }
    counts: dict[str, int] = {}
    for job in paper_jobs:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    assert {r: counts.get(r, 0) for r in expected} == expected
    # the real data and the hub checkpoints: no corpus synthesis, no pretraining
    assert "synthesize_corpus" not in counts and "pretrain_backbone" not in counts
    # only the paper's models: --configfile replaced config.yaml's small models
    seen = {m for j in paper_jobs for m in re.findall(r"model=([^,]+)", j["wildcards"])}
    assert seen == set(models)
    cells = {j["wildcards"] for j in paper_jobs if j["rule"] == "similarity_cell"}
    assert {re.search(r"metric=(\w+)", w).group(1) for w in cells} == set(metrics)
    strategies_seen = {re.search(r"strategy=(\w+)", j["wildcards"]).group(1)
                       for j in paper_jobs if j["rule"] == "pruning_cell"}  # fmt: skip
    assert strategies_seen == set(strategies)


def test_slurm_profile_gives_gpu_rules_one_gpu_and_model_sized_requests(paper_jobs):
    for job in paper_jobs:
        res = job["resources"]
        if job["rule"] in GPU_RULES:
            assert res.get("gpu") == "1" and res.get("cpus_per_gpu") == "4", job
        else:
            assert res.get("gpu", "0") == "0", job
        assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, job
    # large models ask for more memory and time than base ones, in the same rule
    finetune = {re.search(r"model=(\S+)", j["wildcards"]).group(1): j["resources"]
                for j in paper_jobs if j["rule"] == "finetune"}  # fmt: skip
    base, large = finetune["wav2vec2-base"], finetune["wav2vec2-large"]
    assert int(large["mem_mb"]) > int(base["mem_mb"])
    assert int(large["runtime"]) > 3 * int(base["runtime"])  # 317M vs 95M parameters


def test_local_profile_never_requests_a_gpu():
    jobs = planned(dry_run("--profile", "profiles/local"))
    assert jobs and all(j["resources"].get("gpu", "0") == "0" for j in jobs)


def test_parameter_estimates_match_the_models():
    # the shipped small backbone: the estimate from its config.json vs transformers' count
    from workflow_scripts.backbones.registry import load_classifier

    model = load_classifier(str(ROOT / "models/hubert-small"), labels=["a", "b"])
    backbone = sum(p.numel() for n, p in model.named_parameters()
                   if not n.startswith(("projector", "classifier")))  # fmt: skip
    estimate = resources.estimate_params({"hf": str(ROOT / "models/hubert-small")})
    assert abs(estimate - backbone) / backbone < 0.05
    # the same formula on the real architectures gives the published sizes (95M / 317M)
    base = resources.transformer_params(12, 768, 3072, **resources.REAL_CONV)
    large = resources.transformer_params(24, 1024, 4096, **resources.REAL_CONV)
    assert abs(base - 95e6) / 95e6 < 0.02 and abs(large - 317e6) / 317e6 < 0.02
    # a pretrain spec with the default front end: estimate vs the model small_config builds
    from transformers import AutoModel

    from workflow_scripts.backbones.registry import small_config

    spec = {"pretrain": {"arch": "hubert", "layers": 2, "hidden": 32, "heads": 2, "ffn": 64}}
    built = AutoModel.from_config(small_config("hubert", spec["pretrain"]))
    count = sum(p.numel() for p in built.parameters())
    assert abs(resources.estimate_params(spec) - count) / count < 0.05
    # hub ids, known or recognised by name
    assert resources.estimate_params({"hf": "microsoft/wavlm-large"}) > 3e8
    assert resources.estimate_params({"hf": "someone/hubert-xlarge-ft"}) > 3e8
    assert resources.estimate_params({"hf": "someone/other-base"}) == resources.BASE_PARAMS


def test_requests_grow_with_model_size_and_attempt():
    small, large = 2e6, 317e6
    assert resources.mem_mb(small, 8000, 40) < resources.mem_mb(large, 8000, 40)
    assert resources.mem_mb(large, 8000, 40, attempt=2) == 2 * resources.mem_mb(large, 8000, 40)
    assert resources.mem_mb(large, 8000, 40, override=3000) == 3000
    assert resources.runtime_min(small, 60) == 60  # no less than a base model's
    assert resources.runtime_min(large, 60) == 201  # 60 x 317/95, rounded up
    assert 3 * 200 < resources.runtime_min(large, 60, attempt=3) <= 3 * 201
    assert resources.runtime_min(large, 60, override=10, attempt=2) == 20
