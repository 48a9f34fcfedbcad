"""Aggregation helpers and charts: blocks from long similarity rows, offline HTML + PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.report.charts import save_chart, similarity_heatmaps
from workflow_scripts.similarity.report import blocks_table, matrix_of


def long_rows(model, metric, m, higher=True, k=None):
    i, j = np.indices(m.shape)
    return pd.DataFrame({"model": model, "metric": metric, "layer_i": i.ravel(),
                         "layer_j": j.ravel(), "value": m.ravel(), "k": k,
                         "higher_is_similar": higher})  # fmt: skip


def planted(L=8, split=3, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    m = np.full((L, L), 0.2)
    m[:split, :split] = 0.9
    m[split:, split:] = 0.9
    m = m + noise * rng.standard_normal((L, L))
    return (m + m.T) / 2


def test_blocks_from_long_rows_including_distances_and_knn():
    sim = pd.concat(
        [
            long_rows("a", "cka_linear", planted()),
            long_rows("a", "angular_distance", 1 - planted(split=5), higher=False),
            long_rows("a", "mutual_knn", planted(split=2), k=10),
            long_rows("a", "mutual_knn", planted(split=6), k=4),
        ]
    )
    np.testing.assert_array_equal(matrix_of(sim[sim.metric == "cka_linear"]), planted())
    b = blocks_table(sim, "penalized", 0.02, None, knn_k=10)
    got = {(r.metric, r.first_state, r.last_state) for r in b.itertuples()}
    assert got == {
        ("cka_linear", 0, 2),
        ("cka_linear", 3, 7),
        ("angular_distance", 0, 4),
        ("angular_distance", 5, 7),
        ("mutual_knn", 0, 1),
        ("mutual_knn", 2, 7),
    }
    assert (b.n_blocks == 2).all()


def test_heatmap_chart_is_offline_html_and_png(tmp_path):
    sim = pd.concat([long_rows("a", "cosine", planted()), long_rows("b", "cosine", planted())])
    b = blocks_table(sim, "penalized", 0.02, None, knn_k=10)
    chart = similarity_heatmaps(sim, b, knn_k=10)
    save_chart(chart, tmp_path / "c.html", tmp_path / "c.png")
    html = (tmp_path / "c.html").read_text()
    assert "<script" in html and "vega" in html.lower()
    assert "cdn.jsdelivr" not in html and "https://cdn" not in html  # works offline
    png = (tmp_path / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list(tmp_path.glob(".*tmp*"))


def test_similarity_tables_stack_cells_and_detect_blocks(tmp_path):
    from workflow_scripts.similarity.report import similarity_tables

    cells = []
    for model in ("a", "b"):
        path = tmp_path / f"{model}.parquet"
        long_rows(model, "cka_linear", planted()).to_parquet(path)
        cells.append(str(path))
    detector = {"criterion": "penalized", "penalty": 0.02, "max_blocks": None, "knn_k": 10}
    sim, blocks = similarity_tables(cells, detector)
    assert len(sim) == 2 * 64 and list(sim.model.unique()) == ["a", "b"]
    pd.testing.assert_frame_equal(blocks, blocks_table(sim, "penalized", 0.02, None, knn_k=10))
    assert blocks.groupby("model").n_blocks.first().tolist() == [2, 2]
