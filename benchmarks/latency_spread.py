"""Benchmark: the run-to-run spread of the latency ratios a finished run reports (issue #26).

The cells time every compressed model against its unpruned model once, interleaved in one
process (:mod:`workflow_scripts.core.timing`): the speed-up is the median of the paired per-round
ratios, and its 95% interval covers the noise *within* that run only. This benchmark times the
same pairs again, ``--repeats`` more runs (default 2), each with the cell's own timing function
and settings (latency batch, warmup, repeats, device, torch threads - as the cell recorded
them), on the variant the cell saved - nothing is retrained:

* **structured** (``cells/structured/{model}/{sparsity}``): the pruned model the cell saved
  (``structured/{model}/{sparsity}``, :func:`~workflow_scripts.structured.pruned.load_pruned`)
  against the fine-tuned model, by the cell's
  :func:`~workflow_scripts.structured.run._latency` on the cell's first test clips;
* **mimic** (``cells/mimic/{model}/{kind}-{depth}``): the exported mimicked model
  (``exports/mimic/...``, :func:`~workflow_scripts.mimic.model.load_mimicked`: the trained
  mimicker and head) against the fine-tuned model, by
  :func:`~workflow_scripts.mimic.cost.cost_report` (its ``speedup``: whole model / mimicked
  model) on the raw audio of the first testing-cache clips; a cell whose export is missing
  cannot be rebuilt without retraining and is listed as skipped;
* **pruning** (``cells/pruning/{model}/{strategy}``): the removal sets the cell recorded
  (``removed``; layer pruning is not trained), by
  :func:`~workflow_scripts.pruning.sweeps.removal_latency`; by default each curve's headline
  row (``--pruning-rows all``: every row that removes a concrete set; the mean over random
  seeds removes none and is not re-measured).

Per setting it prints the stored ratio, the re-measured ratios and their spread over all runs
(stored + re-measured): max - min and relative to the median, then one summary line; it writes
the same as a CSV (default ``<results>/tables/latency_spread.csv``, ``--out -``: none) with a
provenance sidecar (``.provenance/latency_spread.csv.json``: the cells and saved models it
read, with their digests), which ``make readme-numbers`` puts next to every latency ratio of
the README. The repeats run one after the other in this process, each over every setting (so
two runs of one setting are minutes apart, as two cells of a run are).

Usage: ``python benchmarks/latency_spread.py [--results results] [--repeats 2]
[--stages structured mimic pruning] [--pruning-rows headline|all] [--out PATH|-]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

try:
    import workflow_scripts  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.core import paths
from workflow_scripts.core.provenance import read_provenance

STAGES = ("structured", "mimic", "pruning")
#: What each stage's ratio is (the cells' ``speedup``).
RATIO = {
    "structured": "unpruned / pruned latency",
    "mimic": "whole model / mimicked model latency",
    "pruning": "unpruned / pruned latency",
}
#: The spread file's columns, in order.
COLUMNS = [
    "stage", "model", "method", "n_removed", "seed", "removed_layers", "ratio", "stored",
    "remeasured", "runs", "lo", "hi", "spread", "spread_pct", "device", "threads", "clock",
    "batch_size", "warmup", "repeats", "cell",
]  # fmt: skip


@dataclass
class Setting:
    """One latency ratio a cell reports: what it is and the stored value."""

    stage: str
    model: str
    method: str
    stored: float
    n_removed: int | None = None
    seed: int | None = None
    removed_layers: str = ""
    remeasured: list[float] = field(default_factory=list)


@dataclass
class Cell:
    """A cell's settings and ``measure()``: one run of the cell's timing code, a ratio per
    setting (in order) and the run's conditions (clock, threads, ...)."""

    stage: str
    path: Path
    settings: list[Setting]
    measure: Callable[[], tuple[list[float], dict]] | None
    conditions: dict
    skipped: str = ""
    saved: Path | None = None  # the saved variant the cell's ratio is re-measured on


# ----------------------------------------------------------------------------------------
# where the run's files are
# ----------------------------------------------------------------------------------------
def locate(recorded: str | Path, results: Path) -> Path:
    """A path a cell recorded (relative to the run's working directory, e.g.
    ``results/finetuned/m``) on this machine: as recorded when absolute, else beside the
    results folder (``results.parent / path``), else the longest tail of it that exists under
    the results folder (a results root moved or renamed since, or named by more than one
    folder)."""
    p = Path(recorded)
    if p.is_absolute():
        return p
    beside = results.parent / p
    if beside.exists():
        return beside
    for k in range(1, len(p.parts)):
        inside = results / Path(*p.parts[k:])
        if inside.exists():
            return inside
    return beside


def cell_files(results: Path, stage: str) -> list[Path]:
    """A stage's cell parquets (not their predictions or curves), sorted."""
    side = (".predictions.parquet", ".curves.parquet", ".records.parquet")
    return sorted(p for p in (results / "cells" / stage).glob("*/*.parquet")
                  if not p.name.endswith(side))  # fmt: skip


def recorded(cell: Path) -> tuple[dict, dict]:
    """(the cell's config slice, its recorded input paths) from its provenance."""
    prov = read_provenance(cell)
    if not prov:
        raise ValueError(f"{cell}: no provenance (not written by the workflow)")
    return json.loads(prov["config_slice"]), json.loads(prov.get("input_paths", "{}"))


def data_root(results: Path, override: str | None = None) -> Path:
    """The corpus folder the clips' paths are relative to: ``override``, else the root the
    manifest's job recorded (``data.root`` or the synthetic corpus)."""
    if override:
        return Path(override)
    manifest = paths.path("manifest", str(results))
    root = json.loads(read_provenance(manifest)["config_slice"])["root"]
    return locate(root, results)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Torch CPU threads set to ``n`` (the cell's ``latency_threads``) inside."""
    import torch

    old = torch.get_num_threads()
    if n is not None and not pd.isna(n):
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _device(row, override: str | None) -> tuple[str, str]:
    """(the device to time on, why not when it cannot be): ``override``, else the cell's
    ``timing_device``."""
    import torch

    dev = override or str(row.get("timing_device") or row.get("device") or "cpu")
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        return dev, f"timed on {dev}, which this machine does not have (--device)"
    return dev, ""


def _conditions(row, device: str, batch, warmup, repeats) -> dict:
    return {"device": device, "threads": row.get("latency_threads"),
            "batch_size": batch, "warmup": warmup, "repeats": repeats}  # fmt: skip


# ----------------------------------------------------------------------------------------
# one cell per stage: its settings and the cell's own timing code
# ----------------------------------------------------------------------------------------
def _one_row_cell(path: Path, stage: str, label, device: str | None):
    """(row, slice, inputs, model, setting, device, why, latency settings, conditions) of a
    one-row cell (structured, mimic); ``label(row)`` names its setting."""
    row = pd.read_parquet(path).iloc[0]
    sl, inputs = recorded(path)
    model = str(row.model)
    setting = Setting(stage, model, label(row), float(row.speedup))
    dev, why = _device(row, device)
    lat = sl["latency"]
    cond = _conditions(row, dev, lat["batch_size"], lat["warmup"], lat["repeats"])
    return row, sl, inputs, model, setting, dev, why, lat, cond


def structured_cell(path: Path, results: Path, root: Path, device: str | None = None) -> Cell:
    """The pruned model the cell saved against the fine-tuned model
    (:func:`~workflow_scripts.structured.run._latency`)."""
    row, sl, inputs, model, setting, dev, why, lat, cond = _one_row_cell(
        path, "structured", lambda r: f"target {r.target_sparsity:g}", device
    )
    saved = Path(paths.path("structured_model", str(results), model=model, sparsity=path.stem))
    if not why and not (saved / "structure.json").is_file():
        why = f"{saved}: the pruned model is not saved"
    if why:
        return Cell("structured", path, [setting], None, cond, why)

    def measure():
        from workflow_scripts.backbones.registry import load_classifier
        from workflow_scripts.data.loader import iter_batches
        from workflow_scripts.structured.pruned import load_pruned
        from workflow_scripts.structured.run import _first_clips, _latency, evaluation_rows

        base = locate(inputs["model"], results)
        net = load_classifier(str(base)).to(dev).eval()
        pruned = load_pruned(saved, base).to(dev).eval()
        rows = evaluation_rows(pd.read_parquet(locate(inputs["manifest"], results)), sl)
        batch = sl.get("eval_batch_size") or lat["batch_size"]
        audio = _first_clips(lambda: iter_batches(root, rows, batch), lat["batch_size"])
        with torch_threads(row.get("latency_threads")):
            t = _latency(net, pruned, audio, lat, dev)
        return [t["speedup"]], {"clock": t["timing_clock"], "threads": t["latency_threads"]}

    return Cell("structured", path, [setting], measure, cond, saved=saved)


def mimic_cell(path: Path, results: Path, root: Path, device: str | None = None) -> Cell:
    """The exported mimicked model against the fine-tuned model
    (:func:`~workflow_scripts.mimic.cost.cost_report`'s ``speedup``)."""
    row, sl, inputs, model, setting, dev, why, lat, cond = _one_row_cell(
        path, "mimic", lambda r: f"{r.kind}-{int(r.depth)}", device
    )
    kind, _, depth = path.stem.rpartition("-")
    export = Path(paths.path("mimic_export", str(results), model=model, kind=kind, depth=depth))
    if not why and not (export / "config.json").is_file():
        why = f"{export}: the trained mimicker is not saved (rebuilding it means retraining)"
    if why:
        return Cell("mimic", path, [setting], None, cond, why)

    def measure():
        import torch

        from workflow_scripts.backbones.cachefile import CacheFile
        from workflow_scripts.backbones.registry import load_classifier, normalize_audio
        from workflow_scripts.data.loader import read_clips
        from workflow_scripts.mimic.cost import cost_report
        from workflow_scripts.mimic.model import load_mimicked

        net = load_classifier(str(locate(inputs["model"], results))).eval()
        mm = load_mimicked(export, dev)
        paths = CacheFile(locate(inputs["test_cache"], results)).paths[: lat["batch_size"]]
        batch = normalize_audio(torch.from_numpy(read_clips(root, paths)))
        with torch_threads(row.get("latency_threads")):
            c = cost_report(net, mm.mimicker, batch, dev, lat["warmup"], lat["repeats"],
                            mm.head)  # fmt: skip
        return [c["speedup"]], {"clock": c["timing_clock"], "threads": c["latency_threads"]}

    return Cell("mimic", path, [setting], measure, cond, saved=export)


def pruning_cell(path: Path, results: Path, root: Path, device: str | None = None,
                 rows: str = "headline") -> Cell:  # fmt: skip
    """The recorded removal sets against the fine-tuned model
    (:func:`~workflow_scripts.pruning.sweeps.removal_latency`): each curve's headline row, or
    every row removing a concrete set (``rows="all"``); n = 0 and the mean over seeds are not
    timed."""
    from workflow_scripts.core.tables import layer_text

    df = pd.read_parquet(path)
    sl, inputs = recorded(path)
    lat = sl["latency"]
    first = df.iloc[0]
    dev, why = _device(first, device)
    cond = _conditions(first, dev, lat.get("batch_size"), lat.get("warmup"), lat.get("repeats"))
    pick = df[df.removed.notna() & (df.n_removed > 0) & df.speedup.notna()]
    if rows == "headline":
        pick = pick[pick.headline.astype(bool)]
    settings = [Setting("pruning", str(r.model), str(r.strategy), float(r.speedup),
                        int(r.n_removed), None if pd.isna(r.seed) else int(r.seed),
                        layer_text(r.removed)) for r in pick.itertuples()]  # fmt: skip
    if not lat.get("enabled", True):
        why = why or "latency was not measured (pruning.latency.enabled: false)"
    elif not settings:
        why = why or f"no {rows} row removes a layer"
    if why:
        return Cell("pruning", path, settings, None, cond, why)
    sets = [list(map(int, r)) for r in pick.removed]

    def measure():
        import numpy as np

        from workflow_scripts.backbones.clips import ClipSet
        from workflow_scripts.backbones.registry import load_classifier
        from workflow_scripts.pruning.run import evaluation_rows
        from workflow_scripts.pruning.sweeps import removal_latency

        net = load_classifier(str(locate(inputs["model"], results))).to(dev).eval()
        manifest = pd.read_parquet(locate(inputs["manifest"], results))
        test = ClipSet.from_rows(root, evaluation_rows(manifest, sl))
        audio = test.read(np.arange(min(lat["batch_size"], len(test))))
        with torch_threads(first.get("latency_threads")):
            timed = removal_latency(net, sets, audio, dev, lat["warmup"], lat["repeats"])
        return (
            [t["speedup"] for t in timed],
            {"clock": timed[0]["timing_clock"], "threads": timed[0]["latency_threads"]},
        )

    return Cell("pruning", path, settings, measure, cond)


def find_cells(results: Path, stages=STAGES, root: str | None = None, device: str | None = None,
               pruning_rows: str = "headline") -> list[Cell]:  # fmt: skip
    """Every cell of ``stages`` under ``results`` that reports a latency ratio (one that
    cannot be read, e.g. without provenance or latency columns, is listed as skipped)."""
    where = data_root(results, root)
    out = []
    for stage in stages:
        for path in cell_files(results, stage):
            try:
                if stage == "pruning":
                    out.append(pruning_cell(path, results, where, device, pruning_rows))
                else:
                    make = structured_cell if stage == "structured" else mimic_cell
                    out.append(make(path, results, where, device))
            except (KeyError, ValueError, AttributeError) as e:  # e.g. a cell of older code
                out.append(Cell(stage, path, [], None, {}, f"cannot be read: {e!r}"))
    return out


# ----------------------------------------------------------------------------------------
# the runs and the spread
# ----------------------------------------------------------------------------------------
def remeasure(cells: list[Cell], repeats: int = 2, log=print) -> None:
    """``repeats`` runs, one after the other, each timing every cell once (in place: each
    setting's ``remeasured``, each cell's ``conditions``)."""
    for run in range(1, repeats + 1):
        t0 = time.perf_counter()
        for cell in cells:
            if cell.measure is None:
                continue
            ratios, cond = cell.measure()
            for s, r in zip(cell.settings, ratios, strict=True):
                s.remeasured.append(float(r))
            cell.conditions.update(cond)
        log(f"run {run} of {repeats}: {time.perf_counter() - t0:.0f} s")


def spread_row(s: Setting, cell: Cell, results: Path) -> dict:
    """One setting's row of the spread file (:data:`COLUMNS`): ``lo`` / ``hi`` / ``spread``
    (max - min) over every run, the stored one included, ``spread_pct`` = spread / median of
    the runs, in percent."""
    runs = [s.stored, *s.remeasured]
    runs = [r for r in runs if r is not None and not math.isnan(r)]
    lo, hi = (min(runs), max(runs)) if runs else (math.nan, math.nan)
    mid = statistics.median(runs) if runs else math.nan
    c = cell.conditions
    return {
        "stage": s.stage, "model": s.model, "method": s.method, "n_removed": s.n_removed,
        "seed": s.seed, "removed_layers": s.removed_layers, "ratio": RATIO[s.stage],
        "stored": s.stored, "remeasured": " ".join(f"{r:.10g}" for r in s.remeasured),
        "runs": len(runs), "lo": lo, "hi": hi, "spread": hi - lo,
        "spread_pct": 100.0 * (hi - lo) / mid if mid else math.nan,
        "device": c.get("device"), "threads": c.get("threads"), "clock": c.get("clock"),
        "batch_size": c.get("batch_size"), "warmup": c.get("warmup"),
        "repeats": c.get("repeats"), "cell": str(cell.path.relative_to(results)),
    }  # fmt: skip


def spread_table(cells: list[Cell], results: Path) -> pd.DataFrame:
    """Every re-measured setting's row (:func:`spread_row`)."""
    rows = [spread_row(s, c, results) for c in cells if c.measure is not None for s in c.settings]
    d = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("n_removed", "seed"):
        d[col] = d[col].astype("Int64")
    return d


def _name(r) -> str:
    if r.stage != "pruning":
        return f"{r.model} {r.method}"
    seed = "" if pd.isna(r.seed) else f" seed {r.seed}"
    return f"{r.model} {r.method}{seed} n={r.n_removed} (layers {r.removed_layers})"


def report_lines(table: pd.DataFrame, cells: list[Cell]) -> list[str]:
    """What the benchmark prints: one line per setting, the skipped cells, a summary."""
    lines = []
    for r in table.itertuples():
        again = ", ".join(f"{float(x):.2f}x" for x in r.remeasured.split())
        lines.append(f"{r.stage:<10} {_name(r):<48} stored {r.stored:.2f}x  re-measured "
                     f"{again or '-'}  spread {r.spread:.2f}x ({r.spread_pct:.1f}% of the "
                     f"median; {r.lo:.2f}-{r.hi:.2f}x over {r.runs} runs)")  # fmt: skip
    for c in cells:
        if c.measure is None:
            lines.append(f"{c.stage:<10} skipped {c.path.name}: {c.skipped}")
    if len(table):
        worst = table.loc[table.spread_pct.idxmax()]
        lines.append(
            f"latency ratios of {len(table)} settings, each the stored run + "
            f"{int(table.runs.max()) - 1} re-measured: spread (max - min) median "
            f"{table.spread_pct.median():.1f}% of the ratio, largest "
            f"{worst.spread_pct:.1f}% ({worst.stage} {_name(worst)}: "
            f"{worst.lo:.2f}-{worst.hi:.2f}x)"
        )  # fmt: skip
    else:
        lines.append("no latency ratio re-measured")
    return lines


def write_spread(table: pd.DataFrame, out: Path, cells: list[Cell], args: dict) -> None:
    """The spread file (CSV) and its provenance sidecar: the benchmark's settings, every cell
    and saved model it read with their digests, the code, the environment."""
    from workflow_scripts.core.provenance import collect, write_sidecar, write_text_atomic

    write_text_atomic(out, table.to_csv(index=False))
    inputs = {}
    for i, c in enumerate(c for c in cells if c.measure is not None):
        inputs[f"cell.{i}"] = str(c.path)
        if c.saved is not None:
            inputs[f"saved.{i}"] = str(c.saved)
    meta = collect(args, inputs=inputs, rule="benchmarks/latency_spread.py")
    write_sidecar(out, meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", type=Path, help="a finished results folder")
    p.add_argument("--repeats", type=int, default=2, help="re-measured runs per setting")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--pruning-rows", default="headline", choices=("headline", "all"))
    p.add_argument("--root", help="the corpus folder (default: the one the manifest recorded)")
    p.add_argument("--device", help="time on this device (default: the one each cell used)")
    p.add_argument("--out", help="the spread CSV (default <results>/tables/latency_spread.csv; "
                                 "'-': none)")  # fmt: skip
    a = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per model loaded
    results = a.results.resolve()
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    cells = find_cells(results, a.stages, a.root, a.device, a.pruning_rows)
    todo = sum(len(c.settings) for c in cells if c.measure is not None)
    print(f"{results}: {todo} latency ratios in {len(cells)} cells, {a.repeats} more runs each",
          file=sys.stderr)  # fmt: skip
    remeasure(cells, a.repeats, log=lambda m: print(m, file=sys.stderr))
    table = spread_table(cells, results)
    print("\n".join(report_lines(table, cells)))
    out = a.out or str(results / "tables" / "latency_spread.csv")
    if out != "-":
        settings = {"repeats": a.repeats, "stages": a.stages, "pruning_rows": a.pruning_rows,
                    "device": a.device, "results": str(results)}  # fmt: skip
        write_spread(table, Path(out), cells, settings)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
