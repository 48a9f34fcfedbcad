"""The similarity metrics by name: what each computes, its parameters and how to read it.

A metric is a function ``fn(H, params) -> (value, ci_lo, ci_hi)`` on a layer stack ``H`` (see
:mod:`workflow_scripts.similarity.stack`) with ``params`` its resolved parameters (its own
plus ``n_boot``, ``alpha`` and ``seed``), and one :func:`register` entry giving

* ``kind``: ``"matrix"`` (value and CIs are (L, L) arrays), ``"matrix_per_k"`` (dicts
  k -> (L, L), for neighbourhood sizes k) or ``"vector"`` (length L-1, entry l describing the
  layer pair (l, l+1));
* ``higher_is_similar``: False for a distance (the block detector and the charts use
  ``1 - value`` then);
* ``defaults``: every parameter of its own, with its default (any other key is an error);
* ``schema``: the JSON schema of each parameter's value in ``config.similarity.metrics``
  (checked by :func:`config_problems`).
* ``coerce`` (optional): per parameter, a function normalising its value (``ks`` -> a tuple of
  ints).
* ``ci_label`` (optional): a function ``params -> str`` (or ``"module:attribute"``) naming
  the metric's CI scheme for the cell's ``ci_scheme`` column; default: the percentile
  bootstrap over utterances of :func:`workflow_scripts.similarity.bootstrap.mean_and_ci`.
  ``n_boot`` = 0 is labelled ``"none"``.

Adding a metric is that function (next to its family, e.g. ``cosine.py``) plus one entry
below. ``METRIC_NAMES``, parameter resolution (:func:`resolve_params`), the dispatch of
``compute.compute_metric`` and the config check (:func:`config_problems`) all read this table.

Torch-free, since the config check and the Snakemake plan import it: the built-in entries
name their function as ``"module:attribute"``, imported at first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Result kinds -> the key of :func:`compute_metric`'s result holding the value.
KINDS = {"matrix": "matrix", "matrix_per_k": "matrix", "vector": "vector"}
#: Parameters of every metric (resampling): bootstrap replicates (0 = no CI), CI level, seed.
COMMON_DEFAULTS = {"n_boot": 1000, "alpha": 0.05, "seed": 0}
#: ``ci_scheme`` labels (as :mod:`workflow_scripts.similarity.intervals`, kept torch-free here).
NO_CI = "none"
PERCENTILE = "percentile bootstrap over utterances"


@dataclass(frozen=True)
class Metric:
    """One registry entry (see the module docstring)."""

    name: str
    function: str | Callable
    kind: str
    higher_is_similar: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)
    schema: Mapping[str, dict] = field(default_factory=dict)
    coerce: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    ci_label: str | Callable[[Mapping[str, Any]], str] | None = None

    @property
    def value_key(self) -> str:
        """``"matrix"`` or ``"vector"``: where :func:`compute_metric` puts the value."""
        return KINDS[self.kind]

    def resolve(self) -> Callable:
        """The metric function (imported now when the entry names it as a string)."""
        return _load(self.function)

    def ci_scheme(self, params: Mapping[str, Any]) -> str:
        """What the CI of a result with resolved ``params`` is (the ``ci_scheme`` column)."""
        if params["n_boot"] <= 0:
            return NO_CI
        return PERCENTILE if self.ci_label is None else _load(self.ci_label)(params)


def _load(fn: str | Callable) -> Callable:
    """``fn`` itself, or the attribute a ``"module:attribute"`` string names."""
    if callable(fn):
        return fn
    module, attr = fn.split(":")
    return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, Metric] = {}


def register(
    name: str,
    *,
    kind: str,
    higher_is_similar: bool,
    defaults: Mapping[str, Any] | None = None,
    schema: Mapping[str, dict] | None = None,
    coerce: Mapping[str, Callable[[Any], Any]] | None = None,
    function: str | Callable | None = None,
    ci_label: str | Callable | None = None,
):
    """Add metric ``name``. With ``function`` (a callable or ``"module:attribute"``) it returns
    the new :class:`Metric`; without, it is a decorator registering the decorated function::

        @register("mean_abs_diff", kind="matrix", higher_is_similar=False)
        def mean_abs_diff(H, params): ...
    """
    if function is None:

        def decorator(fn: Callable) -> Callable:
            register(
                name,
                kind=kind,
                higher_is_similar=higher_is_similar,
                defaults=defaults,
                schema=schema,
                coerce=coerce,
                function=fn,
                ci_label=ci_label,
            )
            return fn

        return decorator
    defaults, schema, coerce = dict(defaults or {}), dict(schema or {}), dict(coerce or {})
    if name in _REGISTRY:
        raise ValueError(f"metric {name!r} is already registered")
    if kind not in KINDS:
        raise ValueError(f"metric {name!r}: kind {kind!r} is not one of {list(KINDS)}")
    clash = sorted(set(defaults) & set(COMMON_DEFAULTS))
    stray = sorted((set(schema) | set(coerce)) - set(defaults))
    if clash or stray:
        raise ValueError(f"metric {name!r}: parameters {clash + stray} are common or undeclared")
    spec = Metric(name, function, kind, bool(higher_is_similar), defaults, schema, coerce, ci_label)
    _REGISTRY[name] = spec
    return spec


def unregister(name: str) -> Metric:
    """Remove metric ``name`` (a test's toy metric) and return its entry."""
    return _REGISTRY.pop(name)


def names() -> tuple[str, ...]:
    """Every registered metric name, in registration order."""
    return tuple(_REGISTRY)


def __getattr__(attr: str):
    if attr == "METRIC_NAMES":  # always the current registry
        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def get(name: str) -> Metric:
    """The entry of metric ``name``; ValueError naming the known ones if there is none."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown metric {name!r}; expected one of {names()}")
    return _REGISTRY[name]


def resolve_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` over the metric's defaults and :data:`COMMON_DEFAULTS`, coerced; ValueError
    for an unknown metric or parameter."""
    spec = get(name)
    p = {**COMMON_DEFAULTS, **spec.defaults}
    unknown = set(params or {}) - set(p)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for metric {name!r}")
    p.update(params or {})
    for key, fn in spec.coerce.items():
        p[key] = fn(p[key])
    return p


def config_problems(metrics: Mapping[str, Any], where: str = "config.similarity.metrics"):
    """Problems of a config's ``similarity.metrics`` section (metric name -> its parameters),
    each naming its key: unknown metrics, unknown parameters, values against the schema.
    ``n_boot`` and ``seed`` are section-wide settings, not a metric's parameters."""
    from workflow_scripts.core.config import registry_problems

    schemas = {
        name: {key: spec.schema.get(key, {}) for key in spec.defaults}
        for name, spec in _REGISTRY.items()
    }
    return registry_problems(dict(metrics), schemas, where)


# ----------------------------------------------------------------------------------------
# The built-in metrics
# ----------------------------------------------------------------------------------------
def int_tuple(values) -> tuple[int, ...]:
    """Neighbourhood sizes as a tuple of ints."""
    return tuple(int(k) for k in values)


_PKG = "workflow_scripts.similarity"
_KS = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1}
_CKA_SCHEMA = {
    "debiased": {"type": "boolean"},
    "ci_scheme": {"enum": ["jackknife", "half", "bootstrap"]},
    "memory_limit": {"type": ["integer", "null"], "minimum": 1},
}

register(
    "cosine",
    function=f"{_PKG}.cosine:cosine_metric",
    kind="matrix",
    higher_is_similar=True,
    defaults={"pooling": "flatten"},
    schema={"pooling": {"enum": ["flatten", "per_frame"]}},
)
register(
    "cka_linear",
    function=f"{_PKG}.cka:cka_linear_metric",
    kind="matrix",
    higher_is_similar=True,
    defaults={"debiased": False, "memory_limit": None, "ci_scheme": "jackknife"},
    schema=_CKA_SCHEMA,
    ci_label=f"{_PKG}.cka:ci_label",
)
register(
    "cka_rbf",
    function=f"{_PKG}.cka:cka_rbf_metric",
    kind="matrix",
    higher_is_similar=True,
    defaults={
        "debiased": False,
        "rbf_sigma_frac": 0.8,
        "memory_limit": None,
        "ci_scheme": "jackknife",
    },
    schema={**_CKA_SCHEMA, "rbf_sigma_frac": {"type": "number", "exclusiveMinimum": 0}},
    ci_label=f"{_PKG}.cka:ci_label",
)
register(
    "mutual_knn",
    function=f"{_PKG}.knn:mutual_knn_metric",
    kind="matrix_per_k",
    higher_is_similar=True,
    defaults={"ks": (10,), "normalize": True, "ci_scheme": "half"},
    schema={
        "ks": _KS,
        "normalize": {"type": "boolean"},
        "ci_scheme": {"enum": ["half", "conditional"]},
    },  # fmt: skip
    coerce={"ks": int_tuple},
    ci_label=f"{_PKG}.knn:ci_label",
)
register(
    "angular_distance",
    function=f"{_PKG}.cosine:angular_distance_metric",
    kind="matrix",
    higher_is_similar=False,
    defaults={"reduce": "last"},
    schema={"reduce": {"enum": ["last", "mean", "all"]}},
)
register(
    "block_influence",
    function=f"{_PKG}.cosine:block_influence_metric",
    kind="vector",
    higher_is_similar=False,
    defaults={"variant": "sequence", "ks": (2, 4, 8, 16, 32, 64), "normalize": True},
    schema={
        "variant": {"enum": ["sequence", "per_token", "knn"]},
        "ks": _KS,
        "normalize": {"type": "boolean"},
    },
    coerce={"ks": int_tuple},
    ci_label=f"{_PKG}.cosine:block_influence_ci_label",
)
