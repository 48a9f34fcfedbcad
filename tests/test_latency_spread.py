"""Run-to-run spread of the latency ratios (issue #26): ``benchmarks/latency_spread.py`` times
the cells' saved variants again with the cells' own timing code and settings (a results folder
of the tiny world, tests/mimic_tiny.py: one structured, one mimic and one layer-pruning cell),
and ``make readme-numbers`` puts the spread next to each latency ratio, or says how to get
it."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch
from mimic_tiny import MODEL, PRETRAIN, build_world, tiny_config

from benchmarks import latency_spread as bench
from workflow_scripts.core.provenance import canonical_json, write_parquet
from workflow_scripts.report import readme

torch.set_num_threads(1)
QUIET = lambda *_: None  # noqa: E731
LATENCY = {"batch_size": 2, "warmup": 0, "repeats": 2}


def write_cell(df: pd.DataFrame, path: Path, cell: dict, inputs: dict) -> None:
    """A cell parquet with the provenance the benchmark reads: its slice and input paths."""
    meta = {"config_slice": canonical_json(cell), "input_paths": canonical_json(inputs)}
    write_parquet(df, path, meta)


def pruning_cell(world, res: Path) -> None:
    from workflow_scripts.core.config import validate_config
    from workflow_scripts.pruning import plan
    from workflow_scripts.pruning.run import run_cell

    cfg = validate_config({
        "models": {MODEL: {"pretrain": dict(PRETRAIN)}}, "outputs": ["pruning"],
        "evaluation": {"test_clips": 8},
        "pruning": {"strategies": {"backward": {}}, "threshold": 0.01, "batch_size": 4,
                    "latency": LATENCY},
    })  # fmt: skip
    cell = plan.cell_slice(cfg, strategy="backward", model=MODEL)
    df, _ = run_cell(cell, model=MODEL, model_dir=world["model"], manifest=world["manifest"],
                     root=world["root"], device="cpu")  # fmt: skip
    inputs = {"model": world["model"], "manifest": world["manifest"]}
    write_cell(df, res / "cells/pruning" / MODEL / "backward.parquet", cell, inputs)


def structured_cell(world, res: Path) -> None:
    from workflow_scripts.backbones.registry import load_classifier
    from workflow_scripts.data.loader import iter_batches
    from workflow_scripts.structured.run import evaluation_rows, prune_cell, training_views

    cell = {"target": 0.5, "gates": {"heads": True, "head_dims": True, "ffn_units": True},
            "init_log_alpha": 3.0, "straight_through": False, "steps": 4, "batch_size": 4,
            "lr": 2e-4, "gate_lr": 0.05, "lambda_lr": 0.5, "warmup_frac": 0.3, "seed": 0,
            "distill": {"loss": "l1", "cos_weight": 1.0}, "eval_batch_size": 4,
            "test_clips": 8, "latency": LATENCY}  # fmt: skip
    x0, teacher = training_views(world["train_cache"], [1, 2, 3], None)
    rows = evaluation_rows(pd.read_parquet(world["manifest"]), cell)
    row, *_ = prune_cell(load_classifier(world["model"]), cell, x0, teacher,
                         lambda: iter_batches(world["root"], rows, 4), "cpu",
                         out_dir=res / "structured" / MODEL / "0.5")  # fmt: skip
    inputs = {k: world[k] for k in ("model", "train_cache", "manifest")}
    df = pd.DataFrame([{"model": MODEL, **row}])
    write_cell(df, res / "cells/structured" / MODEL / "0.5.parquet", cell, inputs)


def mimic_cell(world, res: Path) -> None:
    from workflow_scripts.mimic import plan
    from workflow_scripts.mimic.run import run_cell

    cfg = tiny_config(latency=LATENCY)
    sl = plan.cell_slice(cfg, MODEL, "linear", "1")
    inputs = {k: world[k] for k in plan.cell_inputs(cfg, model=MODEL, kind="linear", depth=1)}
    export = res / "exports/mimic" / MODEL / "linear-1"
    cell, *_ = run_cell(inputs, sl, world["root"], "cpu", QUIET, export_dir=str(export))
    path = res / "cells/mimic" / MODEL / "linear-1.parquet"
    write_cell(cell, path, sl, inputs)
    # a cell whose trained mimicker was not saved: cannot be rebuilt without retraining
    shutil.copy(path, path.with_name("transformer-1.parquet"))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A finished results folder of the tiny world: the manifest (recording the corpus
    root), one cell per stage and the variants they saved."""
    d = tmp_path_factory.mktemp("spread")
    world = build_world(d / "world")
    res = d / "results"
    manifest = pd.read_parquet(world["manifest"])
    write_parquet(manifest, res / "data/manifest.parquet",
                  {"config_slice": canonical_json({"root": world["root"]})})  # fmt: skip
    structured_cell(world, res)
    mimic_cell(world, res)
    pruning_cell(world, res)
    return res


@pytest.fixture(scope="module")
def measured(results, tmp_path_factory):
    """(the spread table the benchmark wrote, what it printed): two more runs."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("out") / "latency_spread.csv"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert bench.main(["--results", str(results), "--out", str(out)]) == 0
    return pd.read_csv(out), buf.getvalue(), out


def test_locate_finds_recorded_paths_beside_or_inside_the_results(tmp_path):
    res = tmp_path / "run" / "results"
    (res / "finetuned/m").mkdir(parents=True)
    assert bench.locate("results/finetuned/m", res) == res / "finetuned/m"
    moved = tmp_path / "elsewhere"
    shutil.move(res, moved)
    assert bench.locate("results/finetuned/m", moved) == moved / "finetuned/m"
    assert bench.locate("runs/a/finetuned/m", moved) == moved / "finetuned/m"  # results_dir runs/a
    assert bench.locate("/abs/x", moved) == Path("/abs/x")


def test_each_cell_is_timed_again_with_its_own_settings(measured, results):
    table, printed, out = measured
    assert set(table.stage) == {"structured", "mimic", "pruning"}
    by = table.set_index("stage")
    assert by.loc["structured", "method"] == "target 0.5"
    assert by.loc["mimic", "method"] == "linear-1"
    # layer pruning: the curve's headline (threshold 0.01: every n keeps, n = 2 of 3)
    assert by.loc["pruning", "method"] == "backward" and by.loc["pruning", "n_removed"] == 2
    assert by.loc["pruning", "removed_layers"] == "2 3"  # numbered 1..L
    for stage in ("structured", "mimic", "pruning"):
        cell = pd.read_parquet(results / by.loc[stage, "cell"])
        stored = cell.speedup[cell.headline].iloc[0] if stage == "pruning" else cell.speedup[0]
        assert by.loc[stage, "stored"] == pytest.approx(stored)  # the ratio the cell reported
    for r in table.itertuples():
        again = [float(x) for x in r.remeasured.split()]
        runs = [r.stored, *again]
        assert len(again) == 2 and r.runs == 3 and all(x > 0 for x in again)
        assert (r.lo, r.hi) == pytest.approx((min(runs), max(runs)), rel=1e-8)
        assert r.spread == pytest.approx(r.hi - r.lo)
        assert r.spread_pct == pytest.approx(100 * (r.hi - r.lo) / statistics.median(runs))
        # the cell's conditions: its batch, rounds and threads, the CPU clock on one thread
        assert (r.batch_size, r.warmup, r.repeats, r.threads) == (2, 0, 2, 1)
        assert r.device == "cpu" and r.clock == "cpu"
    assert "skipped transformer-1.parquet" in printed and "retraining" in printed
    assert "latency ratios of 3 settings, each the stored run + 2 re-measured" in printed
    side = json.loads((out.parent / ".provenance" / f"{out.name}.json").read_text())
    read = json.loads(side["input_paths"])
    assert sum(k.startswith("cell.") for k in read) == 3
    assert any(v.endswith("exports/mimic/tiny/linear-1") for v in read.values())
    assert json.loads(side["config_slice"])["repeats"] == 2


def test_every_row_of_a_pruning_curve_on_request(results):
    [cell] = bench.find_cells(results, ["pruning"], pruning_rows="all")
    assert [(s.n_removed, s.removed_layers) for s in cell.settings] == [(1, "3"), (2, "2 3")]


def overview(stored: dict) -> pd.DataFrame:
    """The overview rows that quote latency ratios, with the ratios ``stored`` by stage."""
    rows = [
        ("structured pruning (highest target tried)", "target 50%",
         f"50% of the stack's attention + FFN parameters removed, {stored['structured']:.2f}x "
         "faster"),
        ("best mimicker (replaces the stack)", "linear-1",
         f"90% fewer whole-model parameters, {stored['mimic']:.2f}x faster"),
        ("smallest model keeping the threshold (Pareto frontier)",
         "layer pruning: backward (2 of 3 layers removed)",
         f"40% of the whole model's parameters, {stored['pruning']:.2f}x faster"),
        ("smallest model keeping the threshold with confidence (Pareto frontier, retained CI "
         "lower end)", "mimicker: linear-1 (replaces the whole stack)",
         f"10% of the whole model's parameters, {stored['mimic']:.2f}x faster"),
    ]  # fmt: skip
    return pd.DataFrame([{"model": MODEL, "finding": f, "method": m, "result": r,
                          "retained_pct": 96.0, "accuracy_pct": 80.0, "ci_pct": ""}
                         for f, m, r in rows])  # fmt: skip


def test_readme_puts_the_spread_next_to_each_latency_ratio(measured, tmp_path):
    table, _, _ = measured
    by = table.set_index("stage")
    ov = overview(by.stored.to_dict())
    text = readme.findings_table(ov, spread=table)
    for stage in ("structured", "mimic", "pruning"):
        r = by.loc[stage]
        want = f"{r.stored:.2f}x faster (run-to-run {r.lo:.2f}-{r.hi:.2f}x over 3 runs: "
        assert want in text, stage
    assert text.count("(run-to-run ") == 4  # the confident Pareto pick too
    # without the spread file: each ratio says how to get it
    bare = readme.findings_table(ov)
    assert bare.count(f"x faster {readme.NO_SPREAD}") == 4
    assert "Latency ratios are single runs" in readme.findings_block(ov, "abc1234")
    # a spread file of another run (another stored ratio) is not quoted as this run's
    other = table.assign(stored=table.stored + 0.5)
    assert "of another run; rerun benchmarks/latency_spread.py" in readme.findings_table(
        ov, spread=other
    )
    # the command line reads latency_spread.csv beside the overview
    ov.to_csv(tmp_path / "overview.csv", index=False)
    table.to_csv(tmp_path / "latency_spread.csv", index=False)
    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{readme.START}\nold\n{readme.END}\n")
    readme.main(["--overview", str(tmp_path / "overview.csv"), "--readme", str(copy),
                 "--speechllm", str(tmp_path / "none.csv"), "--commit", "abc1234"])  # fmt: skip
    assert copy.read_text().count("(run-to-run ") == 4
    assert "latency_spread.csv" in copy.read_text()
    # a results root anywhere (a scratch folder) is named as the project's results/
    tables = tmp_path / "scratch" / "tables"
    tables.mkdir(parents=True)
    ov.to_csv(tables / "overview.csv", index=False)
    table.to_csv(tables / "latency_spread.csv", index=False)
    readme.main(["--overview", str(tables / "overview.csv"), "--readme", str(copy),
                 "--speechllm", str(tmp_path / "none.csv"), "--commit", "abc1234"])  # fmt: skip
    assert "from `results/tables/latency_spread.csv`" in copy.read_text()
    assert str(tmp_path) not in copy.read_text()


def test_a_cell_without_provenance_is_listed_not_fatal(results, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(results / "data", res / "data")
    bare = res / "cells/structured" / MODEL / "0.3.parquet"
    bare.parent.mkdir(parents=True)
    pd.read_parquet(results / "cells/structured" / MODEL / "0.5.parquet").to_parquet(bare)
    [cell] = bench.find_cells(res, ["structured"])
    assert cell.measure is None and "no provenance" in cell.skipped
    assert bench.spread_table([cell], res).empty
