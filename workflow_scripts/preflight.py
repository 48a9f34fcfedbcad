"""Before a long run: ``python -m workflow_scripts.preflight [--configfile F] [--slurm]``
(``make preflight``). Checks, each printed as OK / FAIL with what to do:

1. the config is valid (the same validation as the Snakefile's);
2. the data is there (``data.root``: the word folders and the split lists), or the synthetic
   corpus can be made (espeak-ng loads); with ``speechllm.speech.source: corpora``, each
   corpus root (set, not ``<site>``) and the subsets / TSVs the splits read in it;
3. every model the grid's result families need is there: the backbones and, for the SpeechLLM
   families, each SpeechLLM's encoder, decoder and the decoder's tokenizer - as safetensors
   weights in a local folder, or a hub id already in the Hugging Face cache (compute nodes are
   assumed offline: download on the login node first); models the workflow trains itself are
   not checked;
4. the jobs that will run (``snakemake -n`` without ``--forceall``: not those whose outputs
   exist and are up to date) have a known ``disk_mb`` (a ``<TBD>`` names the rule and its
   file), and the free disk of the results root's file system (``results_dir``: ``results/``
   unless config/site.yaml or ``$LAYER_REDUNDANCY_RESULTS`` moves it) covers their sum;
5. their estimated peak GPU memory (``workflow_scripts.core.gpu_memory``) fits the site's
   ``gpu_mem_gb`` (config/site.yaml or ``$GPU_MEM_GB``; unchecked when unset);
6. with ``--slurm``: one tiny GPU job through ``sbatch`` sees CUDA (partition, account and the
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
#: A shipped grid config's value for a key each machine sets in config/site.yaml.
SITE_PLACEHOLDER = "<site>"


def load_config(configfiles: list[str]) -> dict:
    """The run's config as the Snakefile builds it (config.yaml < config/site.yaml < the
    --configfile files, whose ``outputs`` unite), validated."""
    from workflow_scripts.resource_plan import load_config as load

    return load(configfiles, ROOT)


def check_data(config: dict) -> tuple[bool, str]:
    from workflow_scripts.data.plan import words

    root = config["data"]["root"]
    if not root:
        try:
            import espeakng_loader  # noqa: F401
        except ImportError as err:
            return False, f"synthetic corpus: espeak-ng not importable ({err})"
        return True, "synthetic corpus (made by the workflow)"
    if str(root) == SITE_PLACEHOLDER:
        return False, (f"data.root is {SITE_PLACEHOLDER!r} (the shipped grid config leaves it to "
                       "the machine): set config.data.root in config/site.yaml "
                       "(see config/site.example.yaml)")  # fmt: skip
    root = Path(root)
    missing = [w for w in words(config) if not (root / w).is_dir()]
    lists = [f for f in ("validation_list.txt", "testing_list.txt") if not (root / f).is_file()]
    if not root.is_dir() or missing or lists:
        what = missing[:5] + lists or "the folder"
        return False, f"data.root {root}: missing {what}; unpack speech_commands_v0.02 there"
    return True, f"data.root {root}: {len(words(config))} word folders and both split lists"


def check_speechllm_corpora(config: dict) -> list[tuple[bool, str]]:
    """With ``speechllm.speech.source: corpora`` (and a SpeechLLM family in ``outputs``): each
    corpus the splits read, by its key - a root that is set (not ``<site>``), a folder on this
    host, and each part the grid names in it (a LibriSpeech subset folder; a CoVoST TSV and
    the ``clips`` folder)."""
    from workflow_scripts.speechllm import plan as sp
    from workflow_scripts.speechllm.corpus_plan import corpus_parts
    from workflow_scripts.speechllm.text import SPLITS

    if not _families(config) & SPEECHLLM_FAMILIES or sp.speech_source(config) != "corpora":
        return []
    used: dict[str, list[dict]] = {}
    counts = sp.section(config)["speech"]["utterances"]
    for split in SPLITS:
        for part in corpus_parts(config, split).values() if counts[split] else ():
            used.setdefault(part["corpus"], []).append(part)
    out = []
    for name, parts in used.items():
        key, root = f"config.speechllm.speech.corpora.{name}.root", parts[0]["root"]
        if root == SITE_PLACEHOLDER:
            out.append((False, f"{key} is {SITE_PLACEHOLDER!r} (the shipped grid config leaves "
                               "it to the machine): set it in config/site.yaml (see "
                               "config/site.example.yaml)"))  # fmt: skip
            continue
        if not Path(root).is_dir():
            out.append((False, f"{key} {root}: no such folder on this host"))
            continue
        names = sorted({p.get("subset") or p.get("tsv") for p in parts})
        need = [Path(root) / n for n in names]
        if parts[0]["reader"] == "covost":
            need.append(Path(root) / "clips")
            missing = [str(p) for p in need if not p.exists()]
        else:
            missing = [str(p) for p in need if not p.is_dir()]
        what = f"{parts[0]['reader']} corpus {name} ({key}) {root}"
        out.append((False, f"{what}: missing {missing}") if missing
                   else (True, f"{what}: {', '.join(names)}"))  # fmt: skip
    return out


#: Weight files ``from_pretrained(..., use_safetensors=True)`` reads (one file or shards).
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
#: Files of which a decoder's tokenizer needs one (fast, sentencepiece, or BPE vocabulary).
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json")
#: Result families that fine-tune the backbones of ``config.models``; those that build SpeechLLMs.
BACKBONE_FAMILIES = {"pretrained", "baseline", "cache", "similarity", "pruning", "mimic",
                     "structured", "tables"}  # fmt: skip
SPEECHLLM_FAMILIES = {"speechllm", "speechllm_pretrained"}


def hub_snapshot(hub_id: str, files=WEIGHTS) -> Path | None:
    """The cached snapshot folder of a hub model holding one of ``files``, if any."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    repo = home / "hub" / ("models--" + hub_id.replace("/", "--"))
    hits = sorted(p for f in files for p in repo.glob(f"snapshots/*/{f}"))
    return hits[-1].parent if hits else None


def _has(folder: Path, files) -> bool:
    return any((folder / f).is_file() for f in files)


def check_source(label: str, src: str, tokenizer: bool = False) -> tuple[bool, str]:
    """A model (and, for a decoder, its tokenizer) at ``src``: a local folder with
    ``config.json`` and safetensors weights, or a hub id cached with them."""
    need = "model.safetensors / config.json" + (" / a tokenizer" if tokenizer else "")
    folder = Path(src)
    if folder.exists():
        ok = folder.is_dir() and _has(folder, WEIGHTS) and (folder / "config.json").is_file()
        ok = ok and (not tokenizer or _has(folder, TOKENIZER))
        return ok, f"{label}: local folder {src}" + ("" if ok else f" lacks {need}")
    snap = hub_snapshot(src)
    ok = snap is not None and (not tokenizer or _has(snap, TOKENIZER))
    if ok:
        return True, f"{label}: {src} cached as safetensors ({snap})"
    what = "its tokenizer" if snap is not None else "safetensors weights"
    return False, (
        f"{label}: {src} not in the HF cache with {what} (compute nodes are offline): on the "
        f'login node run `python -c "from huggingface_hub import snapshot_download as g; '
        f"g('{src}')\"` (HF_HOME on shared storage), or convert it to a local folder with "
        "model.safetensors"
    )


def _families(config: dict) -> set[str]:
    outputs = config.get("outputs")
    return set(BACKBONE_FAMILIES | SPEECHLLM_FAMILIES) if outputs is None else set(outputs)


def check_models(config: dict) -> list[tuple[bool, str]]:
    """Every model the grid's result families need (all backbones when ``outputs`` is not
    given): the backbones of ``config.models``, then each SpeechLLM's encoder, decoder (with
    its tokenizer) or its folder and the encoder and decoder its ``config.json`` names."""
    out = []
    families = _families(config)
    if families & BACKBONE_FAMILIES:
        for name, spec in config["models"].items():
            if "pretrain" in spec:
                out.append((True, f"{name}: pretrained by the workflow"))
            else:
                out.append(check_source(name, spec["hf"]))
    if families & SPEECHLLM_FAMILIES:
        out += check_speechllms(config)
    return out


def check_speechllms(config: dict) -> list[tuple[bool, str]]:
    import json

    from workflow_scripts.speechllm import plan as sp

    out, seen = [], set()

    def check(label, src, tokenizer=False):
        if (src, tokenizer) not in seen:
            seen.add((src, tokenizer))
            out.append(check_source(label, src, tokenizer))

    models = config.get("models") or {}
    for sllm, spec in (sp.section(config).get("models") or {}).items():
        if "train" in spec:
            enc, dec = spec["train"]["encoder"], spec["train"]["decoder"]
            if enc in models and "pretrain" in models[enc]:
                src = sp.encoder_source(config, enc)
                ok = Path(src).is_dir()
                out.append((ok, f"{sllm} encoder {enc}: {src}" + ("" if ok else
                            " missing: it is pretrained by `outputs: [pretrained]`, run that "
                            "first")))  # fmt: skip
            else:
                check(f"{sllm} encoder", sp.encoder_source(config, enc))
            if dec in sp.pretrained_decoders(config):
                out.append((True, f"{sllm} decoder {dec}: pretrained by the workflow"))
            else:
                check(f"{sllm} decoder + tokenizer", sp.decoder_source(config, dec), True)
            continue
        folder = Path(spec["hf"])
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            out.append((False, f"{sllm}: SpeechLLM folder {folder} lacks config.json"))
            continue
        cfg = json.loads(cfg_file.read_text())
        for part in ("encoder", "decoder"):
            ref = str(cfg.get(part, ""))
            src = os.path.normpath(folder / ref) if (folder / ref).exists() else ref
            check(f"{sllm} {part}" + (" + tokenizer" if part == "decoder" else ""), src,
                  part == "decoder")  # fmt: skip
    return out


def planned_jobs(config_files: list[str], profile: str, directory: Path = ROOT) -> list:
    """The plan (``resource_plan.RulePlan`` per rule) of the jobs that will run: a dry run
    without ``--forceall``, i.e. without the jobs whose outputs exist and are up to date."""
    from workflow_scripts.resource_plan import configfile_args, dry_run, parse_jobs, summarize
    from workflow_scripts.resource_plan import load_config as load

    config = load(config_files, directory)
    out = dry_run(profile, configfile_args(config_files), directory, forceall=False)
    return summarize(parse_jobs(out), config)


def check_unknown(plan: list) -> list[tuple[bool, str]]:
    """A resource that is not a number in the dry run (``<TBD>``), naming the rule, the key and
    the file to set it in."""
    from workflow_scripts.resource_plan import rule_file

    return [
        (
            False,
            f"{r.rule}: resource {key} is `{value}` before the run (Snakemake's default, "
            f"computed from input files not made yet); set `{key}=` in the rule's "
            f"resources in {rule_file(r.rule)}",
        )  # fmt: skip
        for r in plan
        for key, value in r.unknown.items()
    ]


def check_disk(plan: list, results: Path | None = None) -> tuple[bool, str]:
    """The summed ``disk_mb`` of the jobs to run against the free space of the file system
    that holds ``results`` (the results root; its nearest existing folder when it is not
    made yet)."""
    need_mb = sum(r.disk_mb for r in plan)
    jobs = sum(r.jobs for r in plan)
    results = Path(results) if results is not None else ROOT / "results"
    where = next(p for p in (results, *results.parents) if p.exists())
    free_mb = shutil.disk_usage(where).free / 1e6
    ok = free_mb >= need_mb
    return ok, (f"disk: the {jobs} jobs to run need {need_mb / 1000:,.1f} GB, "
                f"{free_mb / 1000:,.1f} GB free on the results root {results}")  # fmt: skip


def check_gpu_memory(plan: list) -> tuple[bool, str]:
    """The largest estimated peak GPU memory of the jobs to run against ``gpu_mem_gb``."""
    from workflow_scripts.core import site

    gpu = [r for r in plan if r.gpu_mem_bytes]
    if not gpu:
        return True, "GPU memory: no GPU job to run"
    peak = max(gpu, key=lambda r: r.gpu_mem_bytes)
    est = f"{peak.gpu_mem_bytes / 1e9:,.1f} GB ({peak.rule}, estimated)"
    limit = site.setting("gpu_mem_gb", "GPU_MEM_GB")
    if limit in (None, ""):
        return True, (f"GPU memory: largest job {est}; not compared (set gpu_mem_gb in "
                      "config/site.yaml)")  # fmt: skip
    over = [f"{r.rule} {r.gpu_mem_bytes / 1e9:,.1f} GB" for r in gpu
            if r.gpu_mem_bytes > float(limit) * 1e9]  # fmt: skip
    if not over:
        return True, f"GPU memory: largest job {est} fits gpu_mem_gb {limit}"
    return False, (f"GPU memory: {', '.join(over)} over gpu_mem_gb {limit}; lower the batch "
                   "(e.g. finetune.batch_size with finetune.accumulation keeping the effective "
                   "batch) or use a larger GPU")  # fmt: skip


def check_slurm_gpu(timeout: int = 1800, results: Path | None = None) -> tuple[bool, str]:
    """Submit one tiny GPU job and wait for it: does it see CUDA? Its log:
    ``<results>/logs/preflight_gpu.log``."""
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
    out = Path(results if results is not None else ROOT / "results") / "logs/preflight_gpu.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = f"{sys.executable} -c 'import torch; print(\"cuda\", torch.cuda.is_available())'"
    proc = subprocess.run([*cmd, "-o", str(out), "--wrap", probe], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    text = out.read_text() if out.exists() else proc.stderr
    ok = proc.returncode == 0 and "cuda True" in text
    return ok, f"slurm GPU job {proc.stdout.strip()}: {text.strip()[-200:] or proc.stderr[-200:]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[],
                    help="as for snakemake; several files combine their grids")  # fmt: skip
    ap.add_argument("--profile", default="slurm")
    ap.add_argument("--slurm", action="store_true", help="also submit one GPU test job")
    args = ap.parse_args(argv)
    from workflow_scripts.results_root import absolute

    checks: list[tuple[bool, str]] = []
    results = None
    try:
        config = load_config(args.configfile)
        results = absolute(config, ROOT)
        checks.append((True, f"config valid; results root {results}"))
    except Exception as err:  # the config's own message names the key
        checks.append((False, f"config: {err}"))
        config = None
    if config is not None:
        checks.append(check_data(config))
        checks += check_speechllm_corpora(config)
        checks += check_models(config)
        plan = planned_jobs(args.configfile, args.profile)
        checks += check_unknown(plan)
        checks.append(check_disk(plan, results))
        checks.append(check_gpu_memory(plan))
    if args.slurm:
        checks.append(check_slurm_gpu(results=results))
    for ok, text in checks:
        print(f"{'OK  ' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
