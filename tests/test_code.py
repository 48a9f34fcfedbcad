"""The code a job runs (workflow_scripts.core.code): digests that ignore comments, docstrings
and formatting; the planned import closure (lazy exports, function-level and relative imports,
registry references resolved per cell); the record of what a process loaded."""

from __future__ import annotations

import json
import textwrap

import pytest
from helpers import default_config

from workflow_scripts.core import code

PKG = {
    "__init__.py": "",
    "scripts/__init__.py": "",
    "scripts/job.py": "from workflow_scripts.stage import run\nrun.go()\n",
    "stage/__init__.py": (
        "from workflow_scripts.core.lazy import lazy_exports\n"
        '_EXPORTS = {"fast": "fast", "slow": "slow"}\n'
        "__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)\n"
    ),
    "stage/run.py": textwrap.dedent("""\
        from . import helper

        def go():
            from workflow_scripts import stage
            return stage.fast(helper.X)
    """),
    "stage/helper.py": "X = 1\n",
    "stage/fast.py": "def fast(x):\n    return x\n",
    "stage/slow.py": "def slow(x):\n    return x\n",
    "stage/registry.py": 'ENTRY = {"fn": "workflow_scripts.stage.slow:slow"}\n',
    "core/__init__.py": "",
    "core/lazy.py": "def lazy_exports(p, e):\n    return None, None\n",
}


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """A throw-away project package, with the module's caches cleared around it."""
    for rel, text in PKG.items():
        f = tmp_path / "workflow_scripts" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    monkeypatch.setattr(code, "ROOT", tmp_path)
    code.lazy_exports.cache_clear()
    yield tmp_path
    code.lazy_exports.cache_clear()


def rel(*names):
    return {f"workflow_scripts/{n}" for n in names}


def test_digest_ignores_comments_docstrings_and_formatting(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('def f(x):\n    """Doc."""\n    return x + 1\n')
    base = code.code_digest(f)
    f.write_text(
        '# a comment\ndef f( x ):  # another\n    """Other doc."""\n\n    return (x + 1)\n'
    )
    assert code.code_digest(f) == base
    f.write_text("def f(x):\n    return x + 2\n")
    assert code.code_digest(f) != base
    f.write_text("def f(x):\n    return x + 1\n")  # docstring gone: same code
    assert code.code_digest(f) == base
    assert code.code_digest(tmp_path / "gone.py") == "missing"


def test_closure_follows_lazy_exports_and_function_imports(pkg):
    planned = set(code.planned_code("job"))
    assert planned == rel(
        "__init__.py", "scripts/job.py", "stage/__init__.py",
        "stage/run.py", "stage/helper.py", "stage/fast.py", "core/__init__.py", "core/lazy.py",
    )  # fmt: skip
    # the registry's named module only when the cell's entry names it
    assert "workflow_scripts/stage/slow.py" not in planned
    refs = code.references({"fn": "workflow_scripts.stage.slow:slow", "n": 3})
    assert refs == ["workflow_scripts.stage.slow"]
    assert set(code.planned_code("job", refs)) == planned | rel("stage/slow.py")


def test_changed_names_the_edited_module_only(pkg):
    recorded = code.planned_code("job")
    (pkg / "workflow_scripts/stage/helper.py").write_text("# comment\nX = 1  # same\n")
    assert code.changed(recorded, pkg) == []
    (pkg / "workflow_scripts/stage/helper.py").write_text("X = 2\n")
    assert code.changed(recorded, pkg) == ["workflow_scripts/stage/helper.py"]
    (pkg / "workflow_scripts/stage/fast.py").unlink()
    assert code.changed(recorded, pkg) == sorted(rel("stage/helper.py", "stage/fast.py"))


def test_record_names_loaded_modules_outside_the_plan(monkeypatch):
    import workflow_scripts.similarity.cka  # noqa: F401  (loaded in this process)

    plan = {k: v for k, v in code.loaded_code().items() if "similarity/cka.py" not in k}
    rec = code.record(json.dumps(plan))
    assert rec["code_planned"] == "true"
    assert json.loads(rec["code_unplanned"]) == ["workflow_scripts/similarity/cka.py"]
    assert "workflow_scripts/similarity/cka.py" in json.loads(rec["code_modules"])
    monkeypatch.setattr(code, "PLAN", None)
    assert code.record()["code_planned"] == "false"


def test_real_cells_plan_only_the_metric_and_strategy_they_load():
    from workflow_scripts.pruning import plan as pruning
    from workflow_scripts.similarity import plan as similarity

    cfg = default_config()

    def sim(metric):
        return set(code.planned_code("similarity_cell", similarity.cell_modules(
            cfg, model="m", metric=metric)))  # fmt: skip

    def prune(strategy):
        return set(code.planned_code("pruning_cell", pruning.cell_modules(
            cfg, model="m", strategy=strategy)))  # fmt: skip

    cka, cos, knn = (f"workflow_scripts/similarity/{m}.py" for m in ("cka", "cosine", "knn"))
    assert cka in sim("cka_linear") and cka not in sim("cosine")
    assert cos in sim("cosine") and knn in sim("mutual_knn")
    scores = "workflow_scripts/pruning/scores.py"
    assert scores in prune("block_influence") and cos in prune("block_influence")
    assert knn in prune("knn_block_influence")
    assert not {scores, cos, knn, cka} & prune("forward")
    assert "workflow_scripts/pruning/sweeps.py" in prune("forward")
