"""The metric registry (names, parameters, config checks derive from it), one cell through
``similarity.run.run_cell`` on a cache file, and the stage's torch-free plan."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from workflow_scripts import similarity
from workflow_scripts.core.config import validate_config
from workflow_scripts.similarity import plan, registry
from workflow_scripts.similarity.bootstrap import mean_and_ci

BUILTIN = ("cosine", "cka_linear", "cka_rbf", "mutual_knn", "angular_distance", "block_influence")


def mean_abs_diff(H, params):
    """Toy metric: mean over features of |h_i - h_j|, times ``scale``, mean over utterances."""
    X = np.asarray(H, dtype=np.float64).reshape(H.shape[0], H.shape[1], -1)
    per = np.abs(X[:, None] - X[None]).mean(-1).transpose(2, 0, 1) * params["scale"]
    return mean_and_ci(per, params)


@pytest.fixture
def toy():
    registry.register(
        "mean_abs_diff",
        kind="matrix",
        higher_is_similar=False,
        defaults={"scale": 1.0},
        schema={"scale": {"type": "number", "exclusiveMinimum": 0}},
    )(mean_abs_diff)
    yield "mean_abs_diff"
    registry.unregister("mean_abs_diff")


def test_metric_names_come_from_the_registry(toy):
    assert similarity.METRIC_NAMES == registry.names() == BUILTIN + (toy,)
    assert registry.get(toy).resolve() is mean_abs_diff


def test_builtin_entries_name_callable_functions():
    assert similarity.METRIC_NAMES == BUILTIN
    for name in BUILTIN:
        spec = registry.get(name)
        assert callable(spec.resolve()), name
        assert spec.value_key == ("vector" if name == "block_influence" else "matrix")
    assert registry.get("mutual_knn").kind == "matrix_per_k"
    directions = {n: registry.get(n).higher_is_similar for n in BUILTIN}
    assert [n for n, up in directions.items() if not up] == ["angular_distance", "block_influence"]


def test_params_resolve_from_registry_defaults(toy):
    assert registry.resolve_params(toy, None) == {"n_boot": 1000, "alpha": 0.05, "seed": 0,
                                                  "scale": 1.0}  # fmt: skip
    p = registry.resolve_params("mutual_knn", {"ks": [4, 2], "n_boot": 5})
    assert p["ks"] == (4, 2) and p["normalize"] is True and p["n_boot"] == 5
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['pooling'\] for metric"):
        registry.resolve_params(toy, {"pooling": "flatten"})
    with pytest.raises(ValueError, match="unknown metric 'nope'; expected one of"):
        registry.resolve_params("nope", {})


def test_register_checks_its_entry(toy):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(toy, kind="matrix", higher_is_similar=True, function=mean_abs_diff)
    with pytest.raises(ValueError, match="kind 'cube'"):
        registry.register("x", kind="cube", higher_is_similar=True, function=mean_abs_diff)
    with pytest.raises(ValueError, match=r"\['seed', 'width'\]"):
        registry.register("x", kind="matrix", higher_is_similar=True, defaults={"seed": 1},
                          schema={"width": {}}, function=mean_abs_diff)  # fmt: skip
    assert "x" not in registry.names()


def test_config_problems_name_the_key(toy):
    metrics = {
        "cosinus": {},
        "cosine": {"pooling": "flatten", "foo": 1},
        "mutual_knn": {"ks": [0, 2]},
        "angular_distance": {"reduce": "middle"},
        toy: {"scale": -1},
    }
    problems = plan.config_problems({"similarity": {"metrics": metrics}})
    assert problems[0].startswith("config.similarity.metrics: unknown key(s) ['cosinus']")
    assert "allowed keys" in problems[0] and "cka_linear" in problems[0] and toy in problems[0]
    assert (
        "config.similarity.metrics.cosine: unknown key(s) ['foo']; allowed keys: ['pooling']"
        in problems
    )
    assert "config.similarity.metrics.mutual_knn.ks[0]: 0 is less than the minimum of 1" in problems
    assert (
        "config.similarity.metrics.angular_distance.reduce: 'middle' is not one of the allowed "
        "values ['last', 'mean', 'all']" in problems
    )
    assert any(p.startswith(f"config.similarity.metrics.{toy}.scale:") for p in problems)
    assert len(problems) == 5
    good = {"cosine": {"pooling": "per_frame"}, "block_influence": {"variant": "knn"}, toy: {}}
    assert plan.config_problems({"similarity": {"metrics": good}}) == []


def test_a_registered_metric_passes_the_schema_and_the_checks(toy):
    import yaml

    with open("config.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["similarity"]["metrics"] = {toy: {"scale": 2.0}, "cosine": {}}
    validate_config(cfg)  # the schema does not enumerate the metrics
    assert plan.config_problems(cfg) == []
    assert plan.wildcard_constraints(cfg) == {"metric": f"{toy}|cosine"}


def test_toy_metric_through_a_cell(tmp_path, toy):
    from workflow_scripts.backbones.cachefile import write_cache
    from workflow_scripts.similarity.run import run_cell

    rng = np.random.default_rng(0)
    H = rng.standard_normal((3, 10, 2, 4)).astype(np.float16)
    cache = tmp_path / "validation.safetensors"
    write_cache(cache, {"hidden_states": H}, np.zeros(10), [f"clip{i}" for i in range(10)])
    cell = {"metric": toy, "params": {"scale": 2.0}, "clips": 8, "n_boot": 30, "seed": 1}
    logged = []
    df = run_cell(str(cache), cell, logged.append, model="m")

    assert list(df.columns) == ["model", "metric", "layer_i", "layer_j", "k", "value", "ci_lo",
                                "ci_hi", "ci_scheme", "n_utterances", "batch_size",
                                "higher_is_similar", "params"]  # fmt: skip
    assert (df.ci_scheme == "percentile bootstrap over utterances").all()
    assert df.batch_size.isna().all() and str(df.batch_size.dtype) == "Int64"
    assert len(df) == 9 and (df.model == "m").all() and (df.metric == toy).all()
    assert df.k.isna().all() and str(df.k.dtype) == "Int64"
    assert (df.n_utterances == 8).all() and not df.higher_is_similar.any()
    assert json.loads(df.params[0]) == {"alpha": 0.05, "n_boot": 30, "scale": 2.0, "seed": 1}
    X = H[:, :8].astype(np.float64).reshape(3, 8, -1)
    want = 2.0 * np.abs(X[:, None] - X[None]).mean(-1).mean(-1)
    got = np.zeros((3, 3))
    got[df.layer_i, df.layer_j] = df.value
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert (df.ci_lo <= df.value + 1e-12).all() and (df.value <= df.ci_hi + 1e-12).all()
    assert (df.ci_hi - df.ci_lo)[df.layer_i != df.layer_j].gt(0).all()
    assert logged == ["layers x utterances x frames x dims: (3, 8, 2, 4)"]

    no_ci = run_cell(str(cache), {**cell, "n_boot": 0})
    assert "model" not in no_ci and no_ci.ci_lo.isna().all() and (no_ci.ci_scheme == "none").all()
    pd.testing.assert_series_equal(no_ci.value, df.value)


def test_compute_metric_dispatches_by_registry_kind(toy):
    H = np.random.default_rng(1).standard_normal((2, 6, 3))
    res = similarity.compute_metric(toy, H, {"n_boot": 0})
    assert res["kind"] == "matrix" and res["higher_is_similar"] is False
    assert res["matrix"].shape == (2, 2) and res["params"]["scale"] == 1.0
    assert len(similarity.to_long_rows(toy, res)) == 4


def test_package_reexports_lazily():
    from workflow_scripts.similarity import cka, cosine, knn

    assert similarity.cosine_matrix is cosine.cosine_matrix
    assert similarity.knn_block_influence is knn.knn_block_influence
    assert similarity.cka_matrix is cka.cka_matrix
    assert "block_influence_per_token" in dir(similarity)
    with pytest.raises(AttributeError):
        similarity.no_such_name  # noqa: B018


@pytest.mark.parametrize("module", ["plan", "registry"])
def test_plan_imports_no_torch(module):
    code = f"import sys, workflow_scripts.similarity.{module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


CONFIG = {
    "models": {"a": {}, "b.x": {}},
    "similarity": {
        "clips": 64,
        "n_boot": 10,
        "seed": 3,
        "metrics": {"cka_linear": {"debiased": True}, "cosine": {}},
        "blocks": {"criterion": "max", "penalty": 0.0, "max_blocks": None, "knn_k": 4},
    },
}


def test_plan_cells_slices_inputs_and_targets():
    assert plan.cells(CONFIG) == [
        {"model": "a", "metric": "cka_linear"},
        {"model": "a", "metric": "cosine"},
        {"model": "b.x", "metric": "cka_linear"},
        {"model": "b.x", "metric": "cosine"},
    ]
    cells = plan.cell_paths(CONFIG, "res")
    assert cells[0] == "res/cells/similarity/a/cka_linear.parquet" and len(cells) == 4
    assert plan.cell_slice(CONFIG, model="a", metric="cka_linear") == {
        "metric": "cka_linear", "params": {"debiased": True}, "clips": 64, "n_boot": 10,
        "seed": 3, "batch_size": None}  # fmt: skip
    assert plan.cell_slice(CONFIG, model="a", metric="cosine") == plan.cell_slice(
        CONFIG, model="b.x", metric="cosine"
    )
    assert plan.cell_inputs(CONFIG, "res", model="b.x", metric="cosine") == {
        "cache": "res/cache/b.x/validation.safetensors"
    }
    assert plan.wildcard_constraints({"similarity": {"metrics": {"a.b": {}, "c": {}}}}) == {
        "metric": r"a\.b|c"
    }
    assert plan.tables_slice(CONFIG) == CONFIG["similarity"]["blocks"]
    assert plan.tables_inputs(CONFIG, "res") == {"cells": cells}
    targets = plan.targets(CONFIG, "res")
    assert targets[:4] == cells
    for p in ("res/tables/similarity.parquet", "res/tables/blocks.csv",
              "res/charts/similarity.html", "res/charts/similarity_b.x.html"):  # fmt: skip
        assert p in targets
