"""The code a job runs, as digests that ignore comments, docstrings and formatting.

Two views of the same thing, compared by the audit and by a test:

* **planned** (:func:`planned_code`, in the rules' ``params.code``, computed when Snakemake
  builds the DAG): the rule's script, every project module it imports - statically, imports
  inside functions included, and through the packages' lazy exports (``similarity.cka_matrix``
  names ``similarity/cka.py``) - and the modules the cell's registry entries name as
  ``"module:attribute"`` (a ``cosine`` similarity cell plans ``cosine.py``, not ``cka.py``),
  each with the closure of its own imports. Snakemake's params trigger then reruns exactly the
  jobs whose code changed.
* **loaded** (:func:`loaded_code`, in every result's provenance): the project modules the
  job's process actually imported, read from ``sys.modules`` when the result is written, and
  the rule script. Anything loaded but not planned is recorded as ``code_unplanned``: the plan
  would not rerun the job when that module changes, so the audit cannot call it current.

A module's digest is the SHA-256 of its abstract syntax tree without docstrings: a comment, a
docstring or a reformat changes nothing; any change to what runs changes the digest. (The AST
form belongs to the Python version, recorded with the packages.) Digests and import lists are
computed once per file and process.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "workflow_scripts"
SCRIPTS = f"{PACKAGE}/scripts"
#: A registry's reference to a function: ``"package.module:attribute"``.
REFERENCE = re.compile(rf"^({PACKAGE}(?:\.\w+)+):\w+$")


# ----------------------------------------------------------------------------------------
# one file
# ----------------------------------------------------------------------------------------
def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[str, ast.Module]:
    tree = _strip_docstrings(ast.parse(Path(path).read_text(), filename=path))
    dump = ast.dump(tree, include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest()[:16], tree


def _parse(path: Path) -> tuple[str, ast.Module]:
    st = path.stat()
    return _parsed(str(path), st.st_mtime_ns, st.st_size)


def code_digest(path: str | os.PathLike) -> str:
    """The digest of one Python file's code (its AST without docstrings); "missing" when the
    file is gone, "unparsable" when it is not Python."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        return _parse(p)[0]
    except SyntaxError:
        return "unparsable"


def relpath(path: str | os.PathLike) -> str:
    """``path`` relative to the project (the key of every module in a code record)."""
    return Path(os.path.relpath(Path(path).resolve(), ROOT)).as_posix()


# ----------------------------------------------------------------------------------------
# the static import closure
# ----------------------------------------------------------------------------------------
def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    if name.split(".")[0] != PACKAGE:
        return None
    base = ROOT / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = Path(relpath(path)).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def lazy_exports(package: str) -> dict[str, str]:
    """A package's lazily exported names -> their submodule (the ``_EXPORTS`` literal of its
    ``__init__``, see :mod:`workflow_scripts.core.lazy`); {} when it has none."""
    init = module_file(package)
    if init is None or init.name != "__init__.py":
        return {}
    for node in _parse(init)[1].body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            return {k: f"{package}.{v}" for k, v in ast.literal_eval(node.value).items()}
    return {}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(path: Path) -> set[str]:
    """Project modules that ``path``'s code imports, anywhere in it (names; parents of a
    dotted module included, since importing ``a.b.c`` runs ``a`` and ``a.b``)."""
    st = path.stat()
    return set(_imports_of(str(path), st.st_mtime_ns, st.st_size, str(ROOT)))


@cache
def _imports_of(file: str, mtime_ns: int, size: int, root: str) -> frozenset[str]:
    path = Path(file)
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = _parse(path)[1]
    found: set[str] = set()
    bound: dict[str, str] = {}  # local name -> lazy package it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
                if alias.asname and lazy_exports(alias.name):
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.update(_with_parents(mod))
            exports = lazy_exports(mod)
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if module_file(sub):
                    found.update(_with_parents(sub))
                    if lazy_exports(sub):
                        bound[alias.asname or alias.name] = sub
                elif alias.name in exports:
                    found.add(exports[alias.name])
    if bound:  # pkg.name on a lazy package imports the submodule exporting name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
            ):
                target = lazy_exports(bound[node.value.id]).get(node.attr)
                if target:
                    found.add(target)
    return frozenset(m for m in found if module_file(m))


def closure(modules: Iterable[str], files: Iterable[str | os.PathLike] = ()) -> set[Path]:
    """The files of ``modules`` (project module names) and ``files``, and of every project
    module they import, transitively."""
    todo = [p for m in modules if (p := module_file(m))]
    todo += [Path(f) if Path(f).is_absolute() else ROOT / f for f in files]
    for m in list(modules):
        todo += [p for parent in _with_parents(m) if (p := module_file(parent))]
    seen: set[Path] = set()
    while todo:
        path = todo.pop().resolve()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        todo += [module_file(m) for m in imports_of(path)]
    return seen


def references(*entries) -> list[str]:
    """The modules that registry entries (dataclasses, dicts or strings) name as
    ``"module:attribute"``: what a cell loads by name at run time."""
    out: list[str] = []

    def visit(value):
        if isinstance(value, str):
            if m := REFERENCE.match(value):
                out.append(m.group(1))
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list | tuple | set):
            for v in value:
                visit(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                visit(getattr(value, name))

    for entry in entries:
        visit(entry)
    return sorted(set(out))


def script_path(rule_script: str) -> Path:
    """The rule script ``name`` (``workflow_scripts/scripts/<name>.py``); error if absent."""
    path = ROOT / SCRIPTS / f"{rule_script}.py"
    if not path.is_file():
        raise FileNotFoundError(f"rule script {relpath(path)} does not exist")
    return path


def planned_code(rule_script: str, modules: Iterable[str] = ()) -> dict[str, str]:
    """relative path -> digest of everything a job of ``rule_script`` will load: the script's
    import closure plus that of ``modules`` (the cell's registry references)."""
    files = closure(sorted(set(modules)), [script_path(rule_script)])
    return {relpath(p): code_digest(p) for p in sorted(files)}


# ----------------------------------------------------------------------------------------
# what a process loaded
# ----------------------------------------------------------------------------------------
def loaded_code() -> dict[str, str]:
    """relative path -> digest of every project file this process imported (``sys.modules``),
    and of the rule script it runs (Snakemake sets ``__main__.__file__`` to it)."""
    files = set()
    pkg = (ROOT / PACKAGE).resolve()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and f.endswith(".py"):
            p = Path(f).resolve()
            if p.is_relative_to(pkg):
                files.add(p)
    return {relpath(p): code_digest(p) for p in sorted(files)}


#: The job's planned code (its rule's ``params.code``), set by the rule's RuleContext.
PLAN: str | None = None


def record(planned_json: str | None = None) -> dict[str, str]:
    """The provenance keys of a job's code: ``code_modules`` (loaded files and digests),
    ``code_planned`` (whether the rule's params carried a plan) and ``code_unplanned``
    (loaded files outside the plan; default plan: :data:`PLAN`)."""
    loaded = loaded_code()
    planned_json = planned_json or PLAN
    planned = json.loads(planned_json) if planned_json else None
    unplanned = sorted(set(loaded) - set(planned)) if planned is not None else []
    return {
        "code_modules": json.dumps(loaded, sort_keys=True, separators=(",", ":")),
        "code_planned": str(planned is not None).lower(),
        "code_unplanned": json.dumps(unplanned, separators=(",", ":")),
    }


def changed(recorded: dict[str, str], root: str | os.PathLike = ROOT) -> list[str]:
    """The files of a code record whose digest under ``root`` differs now (or that are
    gone)."""
    return sorted(f for f, d in recorded.items() if code_digest(Path(root) / f) != d)
