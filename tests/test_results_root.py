"""The results root (``results_dir``): where it comes from (config < --configfile < site file <
$LAYER_REDUNDANCY_RESULTS < --config), what it accepts, and a tiny grid run end to end with an
absolute root set by a site file alone: every output, log and benchmark under it, nothing in the
project's results/, the audit current and a params change flagged on its paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, TINY, default_config, project_copy, run_smk, write_config

from workflow_scripts import grid
from workflow_scripts.core import paths, site
from workflow_scripts.core.config import ConfigError
from workflow_scripts.results_root import results_root

ENV = paths.RESULTS_ENV


@pytest.fixture
def site_file(tmp_path, monkeypatch):
    """A site file path (not written yet) and a clean environment and site cache."""
    monkeypatch.delenv(ENV, raising=False)
    site.load.cache_clear()
    yield tmp_path / "site.yaml"
    site.load.cache_clear()


def run_config(site_path, configfile=None, command_line=None) -> dict:
    """The validated config as the Snakefile assembles it."""
    return grid.validate(grid.assemble(default_config(), site.config_overrides(site_path),
                                       configfile or {}, command_line))  # fmt: skip


def test_results_root_precedence(site_file, monkeypatch):
    assert run_config(site_file)["results_dir"] == paths.RESULTS  # no site file: results/
    assert run_config(site_file, {"results_dir": "from-configfile"})["results_dir"] == (
        "from-configfile"
    )
    site_file.write_text(yaml.safe_dump({"results_dir": "/scratch/me/lr/"}))
    site.load.cache_clear()
    cfg = run_config(site_file, {"results_dir": "from-configfile"})
    assert cfg["results_dir"] == "/scratch/me/lr"  # normalised; the site wins over the file
    assert cfg["pretrained_dir"] == "/scratch/me/lr/pretrained"  # <results>/pretrained
    monkeypatch.setenv(ENV, "/from/env")
    assert run_config(site_file)["results_dir"] == "/from/env"
    assert run_config(site_file, None, {"results_dir": "cli"})["results_dir"] == "cli"
    # an explicit pretrained_dir stays where it is
    assert run_config(site_file, {"pretrained_dir": "models"})["pretrained_dir"] == "models"


@pytest.mark.parametrize("value", ["~/lr", "$SCRATCH/lr", "out/{model}", ".", ""])
def test_results_dir_must_be_a_folder_written_out(site_file, value):
    with pytest.raises(ConfigError, match="config.results_dir"):
        run_config(site_file, {"results_dir": value})


def test_site_file_takes_results_dir_at_the_top_level_only(site_file):
    site_file.write_text(yaml.safe_dump({"config": {"results_dir": "/x"}}))
    with pytest.raises(ValueError, match="top-level key"):
        site.load(site_file)


def test_every_path_helper_is_under_the_root():
    root = "/scratch/me/lr"
    assert paths.path("pruning_cell", root, model="m", strategy="s").startswith(root + "/")
    assert paths.log("pruning_cell", root).startswith(root + "/logs/")
    assert paths.benchmark("pruning_cell", root).startswith(root + "/benchmarks/")
    assert all(p.startswith(root + "/") for p in paths.tables("overview", root).values())


# ----------------------------------------------------------------------------------------
# A tiny grid with the root on "scratch", outside the project, set by the site file alone
# ----------------------------------------------------------------------------------------
MODEL = "hubert-small"
# tests/test_crash.py's grid: TINY trimmed to the corpus, the manifest and one shipped
# backbone's fine-tuning (+ its baseline cell and predictions)
CONFIG = {**TINY, "models": {MODEL: {"hf": f"models/{MODEL}"}}, "outputs": ["manifest", "baseline"]}


def audit(d: Path, *args) -> tuple[int, dict[str, tuple[str, str]]]:
    """(exit status, result path -> (status, detail)) of ``python -m workflow_scripts.audit -C d``
    run from the checkout (as ``make audit`` would be, in ``d``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.audit", "-C", str(d), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    rows = {}
    for line in proc.stdout.splitlines()[1:-1]:
        parts = line.split(maxsplit=3)
        if len(parts) >= 3:
            rows[parts[1]] = (parts[0], parts[3] if len(parts) > 3 else "")
    assert rows or proc.returncode == 2, proc.stdout + proc.stderr
    return proc.returncode, rows


@pytest.mark.slow
def test_tiny_grid_under_a_scratch_root_from_the_site_file(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    d = project_copy(tmp_path / "clone", CONFIG)
    scratch = tmp_path / "scratch" / "lr-results"  # absolute, outside the project
    (d / "config/site.yaml").write_text(yaml.safe_dump({"results_dir": str(scratch)}))
    site.load.cache_clear()
    assert results_root([], d) == scratch  # what the Makefile's targets use

    run_smk(d)
    assert not (d / "results").exists()  # nothing in the project's results/
    cell = scratch / paths.FILES["baseline_cell"].format(model=MODEL)
    assert cell.is_file() and (scratch / paths.FILES["finetuned"].format(model=MODEL)).is_dir()
    logs = {p.relative_to(scratch).parts[0] for p in scratch.rglob("*.log")}
    assert logs == {"logs"}
    assert any((scratch / "benchmarks").rglob("*.tsv"))
    assert any(scratch.rglob(".provenance/*.json"))  # the sidecars beside the outputs
    assert (d / ".snakemake").is_dir()  # Snakemake's metadata stays in the project

    # the audit (default path: the root) finds every output current - Snakemake plans no
    # update for any (its metadata found them under their absolute paths) - all under the root
    code, rows = audit(d)
    assert code == 0 and rows, rows
    assert {s for s, _ in rows.values()} == {"current"}
    assert all(p.startswith(str(scratch) + "/") for p in rows)
    model = str(scratch / paths.FILES["finetuned"].format(model=MODEL))
    assert {str(cell), model, str(scratch / paths.FILES["manifest"])} <= set(rows)

    # a params change (the fine-tuning's steps) flags exactly the fine-tuning job's outputs
    write_config(d, {**CONFIG, "finetune": {**CONFIG["finetune"], "steps": 3}})
    code, rows = audit(d)
    stale = {p for p, (s, _) in rows.items() if s != "current"}
    assert code == 1 and stale == {
        str(scratch / paths.FILES[f].format(model=MODEL))
        for f in ("finetuned", "baseline_cell", "baseline_predictions")
    }  # fmt: skip
    assert "params changed" in rows[str(cell)][1]
