"""Before a long run: ``python -m workflow_scripts.preflight [--configfile F] [--slurm]``
(``make preflight``). Checks, each printed as OK / FAIL with what to do:

1. the config is valid (the same validation as the Snakefile's);
2. the data is there (``data.root``: the word folders and the split lists), or the synthetic
   corpus can be made (espeak-ng loads);
3. every model's weights are there as safetensors: a local folder, or a hub id already in the
   Hugging Face cache (compute nodes are assumed offline: download on the login node first);
4. the free disk under ``results/`` (and the cache folder) covers the plan's estimate
   (``make plan``: the jobs' ``disk_mb``);
5. with ``--slurm``: one tiny GPU job through ``sbatch`` sees CUDA (partition, account and the
   GPU request style from the environment or config/site.yaml).

Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_config(configfiles: list[str]) -> dict:
    """The run's config as the Snakefile builds it (config.yaml < config/site.yaml < each
    --configfile), validated."""
    import yaml
    from snakemake.utils import update_config

    from workflow_scripts import grid
    from workflow_scripts.core import site

    overrides: dict = {}
    for f in configfiles:
        update_config(overrides, yaml.safe_load(Path(f).read_text()) or {})
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    return grid.validate(grid.assemble(config, site.config_overrides(), overrides))


def check_data(config: dict) -> tuple[bool, str]:
    from workflow_scripts.data.plan import words

    root = config["data"]["root"]
    if not root:
        try:
            import espeakng_loader  # noqa: F401
        except ImportError as err:
            return False, f"synthetic corpus: espeak-ng not importable ({err})"
        return True, "synthetic corpus (made by the workflow)"
    root = Path(root)
    missing = [w for w in words(config) if not (root / w).is_dir()]
    lists = [f for f in ("validation_list.txt", "testing_list.txt") if not (root / f).is_file()]
    if not root.is_dir() or missing or lists:
        what = missing[:5] + lists or "the folder"
        return False, f"data.root {root}: missing {what}; unpack speech_commands_v0.02 there"
    return True, f"data.root {root}: {len(words(config))} word folders and both split lists"


def hub_snapshot(hub_id: str) -> Path | None:
    """The cached snapshot folder of a hub model holding model.safetensors, if any."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    repo = home / "hub" / ("models--" + hub_id.replace("/", "--"))
    hits = sorted(repo.glob("snapshots/*/model.safetensors"))
    return hits[-1].parent if hits else None


def check_models(config: dict) -> list[tuple[bool, str]]:
    out = []
    for name, spec in config["models"].items():
        if "pretrain" in spec:
            out.append((True, f"{name}: pretrained by the workflow"))
            continue
        src = Path(spec["hf"])
        if src.exists():
            ok = (src / "model.safetensors").is_file() and (src / "config.json").is_file()
            out.append((ok, f"{name}: local folder {src}" + ("" if ok else
                        " lacks model.safetensors / config.json")))  # fmt: skip
            continue
        snap = hub_snapshot(spec["hf"])
        out.append((snap is not None, f"{name}: {spec['hf']} " + (
            f"cached as safetensors ({snap})" if snap else
            "not in the HF cache as safetensors: on the login node run "
            f"`python -c \"from huggingface_hub import snapshot_download as g; "
            f"g('{spec['hf']}')\"` (HF_HOME on shared storage), or convert it to a local "
            "folder with model.safetensors")))  # fmt: skip
    return out


def check_disk(config_files: list[str], profile: str) -> tuple[bool, str]:
    from workflow_scripts.resource_plan import dry_run, parse_jobs, summarize

    extra = [x for f in config_files for x in ("--configfile", f)]
    need_mb = sum(r.disk_mb for r in summarize(parse_jobs(dry_run(profile, extra))))
    results = ROOT / "results"
    free_mb = shutil.disk_usage(results if results.exists() else ROOT).free / 1e6
    ok = free_mb >= need_mb
    return ok, f"disk: plan needs {need_mb / 1000:,.1f} GB, {free_mb / 1000:,.1f} GB free"


def check_slurm_gpu(timeout: int = 1800) -> tuple[bool, str]:
    """Submit one tiny GPU job and wait for it: does it see CUDA?"""
    from workflow_scripts.core import site

    if not shutil.which("sbatch"):
        return False, "slurm: sbatch not found on this host"
    gres = site.setting("slurm.gres", "GPU_GRES", "")
    cmd = ["sbatch", "--wait", "--parsable", "-t", "10", "--mem", "4000", "-J", "lr-preflight",
           f"--gres={gres}" if gres else "--gpus=1"]  # fmt: skip
    for key, env, flag in (("slurm.partition", "SBATCH_PARTITION", "-p"),
                           ("slurm.account", "SBATCH_ACCOUNT", "-A")):  # fmt: skip
        value = site.setting(key, env, "")
        if value:
            cmd += [flag, str(value)]
    out = ROOT / "results" / "logs" / "preflight_gpu.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = f"{sys.executable} -c 'import torch; print(\"cuda\", torch.cuda.is_available())'"
    proc = subprocess.run([*cmd, "-o", str(out), "--wrap", probe], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    text = out.read_text() if out.exists() else proc.stderr
    ok = proc.returncode == 0 and "cuda True" in text
    return ok, f"slurm GPU job {proc.stdout.strip()}: {text.strip()[-200:] or proc.stderr[-200:]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", action="append", default=[])
    ap.add_argument("--profile", default="slurm")
    ap.add_argument("--slurm", action="store_true", help="also submit one GPU test job")
    args = ap.parse_args(argv)
    checks: list[tuple[bool, str]] = []
    try:
        config = load_config(args.configfile)
        checks.append((True, "config valid"))
    except Exception as err:  # the config's own message names the key
        checks.append((False, f"config: {err}"))
        config = None
    if config is not None:
        checks.append(check_data(config))
        checks += check_models(config)
        checks.append(check_disk(args.configfile, args.profile))
    if args.slurm:
        checks.append(check_slurm_gpu())
    for ok, text in checks:
        print(f"{'OK  ' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
