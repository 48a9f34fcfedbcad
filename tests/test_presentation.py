"""What a reader sees (issue #26): one layer numbering (1..L) in every table, tooltip and export
note, one unit (percent) for accuracies, retained shares, WER and parameter cuts in every
markdown table, and the README's findings block generated from the run's overview."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT

from workflow_scripts.core.tables import is_fraction_column, markdown_table
from workflow_scripts.mimic.report import summary_markdown as mimic_markdown
from workflow_scripts.mimic.report import summary_table as mimic_summary
from workflow_scripts.pruning.export import headline_entries
from workflow_scripts.pruning.report import headline_rows, summary_display, summary_table
from workflow_scripts.report import readme
from workflow_scripts.report.aggregate import baseline_display, baseline_table
from workflow_scripts.report.overview import overview_markdown, overview_table, speechllm_rows
from workflow_scripts.report.pareto import pareto_table
from workflow_scripts.similarity.report import blocks_table
from workflow_scripts.speechllm import report as sllm_report
from workflow_scripts.structured.report import summary_markdown as structured_markdown
from workflow_scripts.structured.report import summary_table as structured_summary

L = 10  # layers of the stack and of the decoder
REMOVED = [8, 9]  # the headline removal, 0-based block indices: layers 9 and 10


def csv_roundtrip(df: pd.DataFrame) -> pd.DataFrame:
    """A table as the next reader gets it: written as CSV and read back."""
    return pd.read_csv(io.StringIO(df.to_csv(index=False)))


def baseline():
    return pd.DataFrame([{"model": "m", "split": s, "accuracy": 0.8, "ci_lo": 0.75,
                          "ci_hi": 0.85, "n": 64, "num_layers": L, "params_total": 1000,
                          "params_transformer": 800}
                         for s in ("testing", "validation")])  # fmt: skip


def pruning_cell():
    """A backward curve of a 10-layer model: n = 1, 2 keep >= 95%, n = 3 does not, so the
    headline removes blocks 8, 9 (layers 9, 10)."""
    rel = [1.0, 0.99, 0.97, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1]
    rows = [{"model": "m", "strategy": "backward", "seed": None, "n_removed": n, "n_layers": L,
             "removed": list(range(L - n, L)), "accuracy": 0.8 * r, "relative_accuracy": r,
             "ci_lo": 0.8 * r - 0.05, "ci_hi": 0.8 * r + 0.05, "base_accuracy": 0.8,
             "eval_clips": 64, "total_params": 1000 - 80 * n, "speedup": 1 + n / 10}
            for n, r in enumerate(rel)]  # fmt: skip
    df = pd.DataFrame(rows)
    df["seed"] = df.seed.astype("Int64")
    df["headline"] = headline_rows(df, 0.95)
    return df


def similarity_cell():
    """A cosine matrix of states 0..10 with two groups: states 0-8 and 9-10."""
    group = np.array([0] * 9 + [1] * 2)
    rows = [{"model": "m", "metric": "cosine", "k": np.nan, "higher_is_similar": True,
             "layer_i": i, "layer_j": j, "value": 1.0 if group[i] == group[j] else 0.1}
            for i in range(L + 1) for j in range(L + 1)]  # fmt: skip
    return pd.DataFrame(rows)


def speechllm_cells():
    """A SpeechLLM pruning cell (backward: n = 1, 2 within ΔWER 0.25, n = 3 not; so blocks
    8, 9, layers 9 and 10, at the prefix) and the angular distances whose most redundant block
    of 2 is the same (d(h_8, h_10) the smallest)."""
    wer = [0.1, 0.11, 0.12, 0.5] + [0.9] * (L - 4)
    prun = pd.DataFrame([{"model": "s", "task": "asr", "strategy": "backward", "seed": None,
                          "n_removed": n, "n_layers": L, "fraction_removed": n / L,
                          "removed": list(range(L - n, L)), "wer": w, "bleu": 50.0,
                          "ser": 0.5, "healed": False, "healed_wer": np.nan,
                          "healed_bleu": np.nan, "decoder_params": 100, "base_wer": 0.1,
                          "base_bleu": 50.0} for n, w in enumerate(wer)])  # fmt: skip
    sim = pd.DataFrame([{"model": "s", "task": t, "input": "text", "metric": "angular",
                         "layer": i, "n": 2, "value": 0.1 if i == 8 else 0.5, "n_layers": L}
                        for t in ("asr", "st") for i in range(L - 1)])  # fmt: skip
    return prun, sim


def test_one_layer_numbering_in_every_table_and_export():
    """The same removal (0-based blocks 8, 9 of 10) is 'layers 9 10' in the overview, the
    pruning summary, export.json and the SpeechLLM tables; blocks.csv names states with
    state 0 = 'input', so its groups read in the same numbering (9-10 = layers 9 and 10)."""
    cell = pruning_cell()
    # pruning summary as written (CSV)
    summary = csv_roundtrip(summary_display(summary_table(cell, 0.95)))
    row = summary.iloc[0]
    assert row.max_removed_prefix == 2 and row.removed_layers_at_prefix == "9 10"
    assert row.removed_index_at_prefix == "[8, 9]"  # 0-based only under an *_index name
    assert "removed_at_prefix" not in summary and "removed_at_max" not in summary
    # export.json
    [entry] = headline_entries(cell)
    entry = json.loads(json.dumps(entry))
    assert entry["removed_layers"] == [9, 10] and entry["removed_index"] == REMOVED
    assert "removed" not in entry
    # blocks.csv: states, 0 = the stack's input
    blocks = csv_roundtrip(blocks_table(similarity_cell(), "max", 0.0, None, 10))
    assert list(blocks.states) == ["input-8", "9-10"]
    assert list(blocks.first_state) == [0, 9] and blocks.n_states.iloc[0] == L + 1
    # the overview (from blocks.csv and the pruning table)
    ov = overview_table(baseline_table(baseline()), blocks=blocks, pruning=cell, threshold=0.95)
    res = dict(zip(ov.finding.str.split(" \\(").str[0], ov.result, strict=True))
    assert res["layers removable"] == "2 of 10 layers (20%): 9 10"
    assert res["groups of similar layers"] == "input-8, 9-10"
    assert "9 10" in overview_markdown(ov, 0.95, ["pruning"])
    # the SpeechLLM tables as written (CSV), and the overview's SpeechLLM section from them
    prun, sim = speechllm_cells()
    tables = sllm_report.build_tables(sim, prun, pd.DataFrame(), 0.25, {}, 2)
    s = csv_roundtrip(sllm_report.display("summary", tables["summary"]))
    assert s.max_removed_prefix.iloc[0] == 2 and s.removed_layers_at_prefix.iloc[0] == "9 10"
    o = csv_roundtrip(sllm_report.display("overlap", tables["overlap"]))
    assert o.layers.iloc[0] == "[9, 10]"  # the most redundant block of 2: layers 9 and 10
    pairs = sllm_report.display("pairs", tables["pairs"])
    assert pairs.layers_a.iloc[0] == [9, 10] and "blocks_a" not in pairs
    md = sllm_report.markdown("summary", tables["summary"])
    assert "numbered 1..L" in md and "| 9 10 |" in md
    rows = speechllm_rows(s, o)
    assert rows.iloc[0, 4] == "2 of 10 decoder layers (20.0%): 9 10"


def _md_tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every markdown table in ``md``."""
    out, lines = [], md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            head = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for r in lines[i + 2 :]:
                if not r.startswith("|"):
                    break
                rows.append([c.strip() for c in r.strip("|").split("|")])
            out.append((head, rows))
    return out


def report_markdowns() -> dict[str, str]:
    """Every markdown table the report functions write, from small inputs."""
    cell = pruning_cell()
    prun, sim = speechllm_cells()
    sllm = sllm_report.build_tables(sim, prun, pd.DataFrame(), 0.25, {}, 2)
    mimic = pd.DataFrame([{"model": "m", "kind": "transformer", "depth": 1, "target_layers": [L],
                           "accuracy": 0.7, "ci_lo": 0.65, "ci_hi": 0.75, "val_accuracy": 0.7,
                           "backbone_accuracy": 0.8, "eval_clips": 64, "stack_params": 800,
                           "mimicker_params": 40, "model_params": 1000,
                           "mimicked_model_params": 240, "stack_ms": 10.0, "mimicker_ms": 1.0,
                           "model_ms": 20.0, "mimicked_model_ms": 11.0, "batch_size": 4,
                           "device": "cpu"}])  # fmt: skip
    structured = pd.DataFrame([{"model": "m", "target_sparsity": 0.6, "achieved_sparsity": 0.61,
                                "expected_sparsity": 0.6, "accuracy": 0.78, "base_accuracy": 0.8,
                                "retained": 0.975, "eval_clips": 64, "total_params": 600,
                                "base_total_params": 1000, "latency_ms": 5.0,
                                "base_latency_ms": 7.0, "ci_lo": 0.7, "ci_hi": 0.8,
                                "kept_heads": [2, 2]}])  # fmt: skip
    base = baseline_table(baseline())
    pareto = pareto_table(pruning=cell, mimic=mimic, structured=structured)
    ov = overview_table(base, pruning=cell, mimic=mimic, structured=structured, pareto=pareto)
    shown = {k: csv_roundtrip(sllm_report.display(k, sllm[k])) for k in ("summary", "overlap")}
    sllm_rows = speechllm_rows(shown["summary"], shown["overlap"])
    return {
        "baseline.md": markdown_table(baseline_display(base)),
        "pruning_summary.md": markdown_table(summary_display(summary_table(cell, 0.95))),
        "mimic_summary.md": mimic_markdown(mimic_summary(mimic, 0.95)),
        "structured.md": structured_markdown(structured_summary(structured)),
        "pareto.md": markdown_table(pareto, ".1f"),
        "overview.md": overview_markdown(ov, 0.95, ["pruning"], sllm_rows),
        **{f"speechllm_{k}.md": sllm_report.markdown(k, t) for k, t in sllm.items()},
    }


def test_every_markdown_table_shows_percent():
    """No bare fractions: every column of an accuracy, retained share, WER or sparsity says
    it is in percent, and its numbers are percentages (the 0.8 accuracy reads 80)."""
    mds = report_markdowns()
    checked = 0
    for name, md in mds.items():
        for head, rows in _md_tables(md):
            for j, col in enumerate(head):
                word = re.search(r"accuracy|retained|wer|sparsity", col, re.I)
                if not word or re.search(r"delta|ΔWER|_index|_n$", col):
                    continue
                assert "%" in col or "pct" in col, f"{name}: column {col!r} has no unit"
                assert not is_fraction_column(col), (name, col)
                values = [float(v) for r in rows if re.fullmatch(r"-?[\d.]+", v := r[j])]
                assert all(v == 0 or v > 1 for v in values), f"{name}: {col} {values}"
                checked += 1
    assert checked > 25
    assert "80" in mds["baseline.md"] and "| 0.8 |" not in mds["baseline.md"]
    # parameter shares name their denominator
    assert "whole_model_param_reduction_pct" in mds["mimic_summary.md"]
    assert "stack_param_reduction_pct" in mds["mimic_summary.md"]
    assert "achieved_stack_sparsity_pct" in mds["structured.md"]
    assert "whole_model_params_pct" in mds["structured.md"]
    assert "whole-model parameters (95% of the stack's)" in mds["overview.md"]


def overview_csv() -> pd.DataFrame:
    cell = pruning_cell()
    blocks = blocks_table(similarity_cell(), "max", 0.0, None, 10)
    ov = overview_table(baseline_table(baseline()), blocks=blocks, pruning=cell)
    return csv_roundtrip(ov)


def test_readme_findings_block_comes_from_the_overview(tmp_path):
    """The block between the markers is generated from overview.csv (and the SpeechLLM
    summary) with the run's commit; the prose around it is kept; the README has the markers."""
    ov = overview_csv()
    prun, sim = speechllm_cells()
    sllm = sllm_report.build_tables(sim, prun, pd.DataFrame(), 0.25, {}, 2)["summary"]
    sllm = csv_roundtrip(sllm_report.display("summary", sllm))
    block = readme.findings_block(ov, "abc1234", sllm)
    assert "commit `abc1234`" in block
    table = dict((r[0], r[1]) for r in _md_tables(block)[0][1])
    assert table["fine-tuned test accuracy (95% CI)"] == "80.0% (75.0-85.0)"
    [removable] = [v for k, v in table.items() if k.startswith("layers removable")]
    assert removable == "2 of 10 (layers 9 10)"  # backward only: 2 of 10, layers 9 and 10
    assert any(v == "input-8, 9-10" for v in table.values())
    sllm_table = _md_tables(block)[1]
    assert sllm_table[1][0][:3] == ["s", "asr", "10.0%"] and "backward 2 (9 10)" in sllm_table[1][0]
    # rewriting keeps the prose and replaces only the block
    text = f"intro\n\n{readme.START}\nold table\n{readme.END}\n\noutro\n"
    new = readme.rewrite(text, block)
    assert new.startswith("intro\n\n") and new.endswith(f"{readme.END}\n\noutro\n")
    assert "old table" not in new and readme.rewrite(new, block) == new
    with pytest.raises(ValueError):
        readme.rewrite("no markers", block)
    # the command line, on a copy of the README
    (tmp_path / "overview.csv").write_text(ov.to_csv(index=False))
    readme_copy = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    readme_copy.write_text(original)
    readme.main(["--overview", str(tmp_path / "overview.csv"), "--readme", str(readme_copy),
                 "--speechllm", str(tmp_path / "none.csv"), "--commit", "abc1234"])  # fmt: skip
    out = readme_copy.read_text()
    head = original.split(readme.START)[0]
    tail = original.split(readme.END)[1]
    assert out.startswith(head) and out.endswith(tail) and "commit `abc1234`" in out


def test_run_commit_is_dirty_only_when_recorded_so(tmp_path):
    """Provenance records git_dirty as the text "true"/"false": "false" is a clean run."""
    import pandas as pd

    from workflow_scripts.core.provenance import write_parquet
    from workflow_scripts.report import readme

    for dirty, suffix in (("false", ""), ("true", "-dirty")):
        write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "overview.parquet",
                      {"git_commit": "abcdef0123", "git_dirty": dirty})  # fmt: skip
        assert readme.run_commit(tmp_path / "overview.csv") == "abcdef0" + suffix


def _encodings(spec) -> list[tuple[str, dict]]:
    """(channel, encoding) of every field a chart spec encodes, tooltips one by one."""
    out = []
    if isinstance(spec, dict):
        for channel, enc in (spec.get("encoding") or {}).items():
            for e in enc if isinstance(enc, list) else [enc]:
                if isinstance(e, dict) and "field" in e:
                    out.append((channel, e))
        for v in spec.values():
            out += _encodings(v)
    elif isinstance(spec, list):
        for v in spec:
            out += _encodings(v)
    return out


def report_charts() -> dict:
    """Every chart of the report that shows an accuracy, retained share, WER or layer share,
    from small inputs."""
    from workflow_scripts.mimic.report import tradeoff_long
    from workflow_scripts.report import charts
    from workflow_scripts.report.aggregate import baseline_chart
    from workflow_scripts.report.overview import overview_chart
    from workflow_scripts.structured.report import comparison_long

    cell = pruning_cell().assign(latency_ms=lambda d: 10.0 - d.n_removed, accuracy_min=0.5,
                                 accuracy_max=0.9, healed_accuracy=0.7)  # fmt: skip
    mimic = pd.DataFrame([{"model": "m", "kind": "linear", "depth": 1, "target_layers": [L],
                           "accuracy": 0.7, "backbone_accuracy": 0.8, "batch_size": 4,
                           "stack_params": 800, "mimicker_params": 40, "model_params": 1000,
                           "mimicked_model_params": 240, "stack_ms": 10.0, "mimicker_ms": 1.0,
                           "model_ms": 20.0, "mimicked_model_ms": 11.0}])  # fmt: skip
    structured = pd.DataFrame([{"model": "m", "target_sparsity": 0.6, "achieved_sparsity": 0.61,
                                "accuracy": 0.78, "base_accuracy": 0.8, "retained": 0.975,
                                "total_params": 600, "base_total_params": 1000}])  # fmt: skip
    ov = overview_table(baseline_table(baseline()), pruning=cell, threshold=0.95)
    prun, _ = speechllm_cells()
    return {
        "baseline": baseline_chart(baseline_table(baseline())),
        "pruning_accuracy": charts.pruning_accuracy_chart(cell, 0.95),
        "pruning_latency": charts.pruning_latency_chart(cell),
        "comparison": charts.comparison_chart(comparison_long(structured, cell, mimic)),
        "mimic_tradeoff": charts.mimic_tradeoff_chart(tradeoff_long(mimic_summary(mimic))),
        "overview": overview_chart(ov),
        "speechllm_delta_wer": sllm_report.delta_wer_chart(prun, 0.25),
    }


def test_every_chart_shows_shares_in_percent():
    """No chart axis or tooltip shows an accuracy, retained share, WER or share of layers as a
    fraction: every such field is a ``*_pct`` column holding percentages (the 0.8 accuracy is
    80), and its axis title (and any tooltip title) says "%"."""
    checked = 0
    for name, chart in report_charts().items():
        spec = chart.to_dict()
        data = pd.DataFrame([r for rows in spec.get("datasets", {}).values() for r in rows])
        for channel, e in _encodings(spec):
            field = e["field"]
            assert not is_fraction_column(field) and "fraction" not in field, (name, field)
            if not field.endswith("_pct") and field != "value":
                continue
            checked += 1
            if channel in ("x", "y") or "title" in e:
                assert "%" in str(e.get("title", "")), (name, channel, field, e.get("title"))
            if "format" in e:
                assert not e["format"].endswith("%"), (name, field)  # already percent
            if field in data and data[field].notna().any():
                assert data[field].abs().max() > 1, (name, field)  # percentages, not 0..1
    assert checked >= 20
