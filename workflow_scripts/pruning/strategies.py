"""The layer-pruning strategies by name: the one registry.

A strategy is a function ``fn(L, keep_first, *, scores, evaluator, seed) -> sets`` with
``sets[n]`` the sorted block indices removed at ``n = 0 .. L-1`` removed blocks, plus one
:func:`register` entry saying what it needs:

* nothing (a fixed order: ``forward``, ``backward``, ``forward_backward``);
* ``scores`` from the validation hidden-state cache: the entry's ``scores(H, settings)``
  computes them from the (L+1, N, T, D) stack (``block_influence``, ``knn_block_influence``,
  ``angular_block``);
* ``evaluator``: the entry names a builder ``(model, clips, device, settings) -> evaluator``
  run on ``settings["clips"]`` validation clips through the model (``similarity_greedy``);
* ``seeded``: one removal order per seed of ``settings["seeds"]`` (``random``), so the cell
  also gets mean-over-seeds rows;

its default ``keep_first`` (never remove block 0), its own settings with their ``defaults``
(any other key is a config error) and the JSON ``schema`` of each setting's value.

Adding a strategy is that function plus one entry below; the configured names, the config
check (:func:`config_problems`), the rules' slices and inputs (:mod:`.plan`) and the cell
(:mod:`.run`) all read this table. Numpy only (Snakemake's plan imports it): the similarity
metrics behind the cache scores and the evaluator builders (``"module:attribute"``) are
imported at first use.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Keys every strategy accepts besides its own settings (see config/schema.d/pruning.yaml).
COMMON_KEYS = ("keep_first", "heal")


@dataclass(frozen=True)
class Strategy:
    """One registry entry (see the module docstring)."""

    name: str
    function: Callable[..., list[list[int]]]
    keep_first: bool = False
    seeded: bool = False
    scores: str | Callable[[Any, Mapping[str, Any]], np.ndarray] | None = None
    evaluator: str | Callable | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    schema: Mapping[str, dict] = field(default_factory=dict)

    @property
    def needs(self) -> str | None:
        """``"cache"`` (scores from the validation cache), ``"model"`` (an evaluator running
        validation clips through the model) or None."""
        return "cache" if self.scores else "model" if self.evaluator else None

    def build_evaluator(self, model, clips, device, settings: Mapping[str, Any]):
        """The strategy's evaluator on calibration ``clips`` (imported now when named as
        ``"module:attribute"``)."""
        return _load(self.evaluator)(model, clips, device, settings)

    def compute_scores(self, H, settings: Mapping[str, Any]) -> np.ndarray:
        """The entry's scores of stack ``H`` (imported now when named as
        ``"module:attribute"``)."""
        return _load(self.scores)(H, settings)


def _load(fn: str | Callable) -> Callable:
    """``fn`` itself, or the attribute a ``"module:attribute"`` string names (registries name
    their torch functions so, imported at first use; :mod:`workflow_scripts.core.code` plans
    a cell's code from these references)."""
    if not isinstance(fn, str):
        return fn
    module, attr = fn.split(":")
    return getattr(importlib.import_module(module), attr)


#: name -> entry, in the order of the tables and charts.
STRATEGIES: dict[str, Strategy] = {}


def register(
    name: str,
    *,
    function: Callable | None = None,
    keep_first: bool = False,
    seeded: bool = False,
    scores: str | Callable | None = None,
    evaluator: str | Callable | None = None,
    defaults: Mapping[str, Any] | None = None,
    schema: Mapping[str, dict] | None = None,
):
    """Add strategy ``name``. With ``function`` it returns the new :class:`Strategy`;
    without, it is a decorator registering the decorated function::

        @register("odd_first")
        def odd_first(L, keep_first, *, scores=None, evaluator=None, seed=0): ...
    """
    if function is None:

        def decorator(fn: Callable) -> Callable:
            register(name, function=fn, keep_first=keep_first, seeded=seeded, scores=scores,
                     evaluator=evaluator, defaults=defaults, schema=schema)  # fmt: skip
            return fn

        return decorator
    defaults, schema = dict(defaults or {}), dict(schema or {})
    if name in STRATEGIES:
        raise ValueError(f"strategy {name!r} is already registered")
    stray = sorted((set(schema) - set(defaults)) | (set(defaults) & set(COMMON_KEYS)))
    if stray or (scores and evaluator):
        raise ValueError(f"strategy {name!r}: settings {stray} undeclared or common, or both "
                         "scores and an evaluator")  # fmt: skip
    spec = Strategy(name, function, bool(keep_first), bool(seeded), scores, evaluator,
                    defaults, schema)  # fmt: skip
    STRATEGIES[name] = spec
    return spec


def unregister(name: str) -> Strategy:
    """Remove strategy ``name`` (a test's toy strategy) and return its entry."""
    return STRATEGIES.pop(name)


def get(name: str) -> Strategy:
    """The entry of ``name``; ValueError naming the registered ones if there is none."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {list(STRATEGIES)}")
    return STRATEGIES[name]


def resolve_settings(name: str, own: Mapping[str, Any] | None) -> dict[str, Any]:
    """A strategy's config entry over its defaults (``keep_first`` and ``heal`` included as
    given); the defaults are copied, so the result may be changed."""
    return {**copy.deepcopy(dict(get(name).defaults)), **(own or {})}


def settings_schema(name: str) -> dict[str, dict]:
    """Strategy ``name``'s settings -> the JSON schema of each value: its own (from the entry)
    plus the common keys (checked by config/schema.d/pruning.yaml)."""
    spec = get(name)
    own = {key: dict(spec.schema.get(key, {})) for key in spec.defaults}
    return {**own, **{key: {} for key in COMMON_KEYS}}


def config_problems(section: Mapping[str, Any]) -> list[str]:
    """Problems of a config's ``pruning.strategies`` (name -> settings), each naming its key:
    unknown strategies, unknown settings, values against the entry's schema."""
    from workflow_scripts.core.config import registry_problems

    schemas = {name: settings_schema(name) for name in STRATEGIES}
    return registry_problems(dict(section), schemas, "config.pruning.strategies")


# ----------------------------------------------------------------------------------------
# Removal sets
# ----------------------------------------------------------------------------------------
def removal_sets(
    strategy: str,
    n_layers: int,
    scores=None,
    seed: int = 0,
    evaluator: Callable[[list[list[int]]], Sequence[float]] | None = None,
    keep_first: bool | None = None,
) -> list[list[int]]:
    """For ``n = 0 .. n_layers-1`` the sorted block indices removed at ``n`` removed blocks.

    ``sets[n]`` has exactly ``n`` entries; ``sets[0] == []``. Strategies:

    * ``forward``: 1, 2, 3, ... (block 0 kept; ``keep_first=False`` starts at 0).
    * ``backward``: L-1, L-2, ... (top first).
    * ``forward_backward``: alternating ends 1, L-1, 2, L-2, ... (block 0 kept by default).
    * ``block_influence`` / ``knn_block_influence``: ascending ``scores`` (length L; BI_l =
      1 - cos(h_l, h_l+1), resp. 1 - mutual-kNN(h_l, h_l+1)); ties broken by lower index.
    * ``angular_block`` (Gromov et al. 2024): ``scores`` is the (L+1)x(L+1) angular-distance
      matrix over h_0..h_L; for each n the contiguous blocks l*..l*+n-1 with l* = argmin_l
      d(h_l, h_l+n) (lowest l on ties). Sets for different n need not be nested.
    * ``similarity_greedy``: iteratively add the block whose removal (together with those already
      removed) gives the lowest ``evaluator`` cost; ``evaluator(list_of_sets) -> costs`` (e.g. a
      :class:`~workflow_scripts.pruning.sweeps.SimilarityEvaluator` built on calibration clips).
      Ties: lowest index.
    * ``random``: a seeded permutation (``numpy.random.default_rng(seed)``); nested sets.

    ``keep_first`` (default: the entry's, True for forward/forward_backward) excludes block 0.
    Scores must come from a calibration split distinct from the test split.
    """
    L = int(n_layers)
    if L < 1:
        raise ValueError("n_layers must be >= 1")
    spec = get(strategy)
    kf = spec.keep_first if keep_first is None else bool(keep_first)
    return spec.function(L, kf, scores=scores, evaluator=evaluator, seed=seed)


def removal_plans(
    strategy: str,
    n_layers: int,
    settings: Mapping[str, Any],
    keep_first: bool | None = None,
    scores=None,
    evaluator=None,
) -> list[tuple[int | None, list[list[int]]]]:
    """``[(seed, sets)]`` with ``sets[n]`` the blocks removed at n removed blocks: one entry per
    seed for a seeded strategy (``settings["seeds"]``), else one entry with seed None."""
    if get(strategy).seeded:
        seeds = settings.get("seeds", [0])
        return [
            (int(s), removal_sets(strategy, n_layers, seed=int(s), keep_first=keep_first))
            for s in seeds
        ]
    sets = removal_sets(
        strategy, n_layers, scores=scores, evaluator=evaluator, keep_first=keep_first
    )
    return [(None, sets)]


def scores_from_cache(strategy: str, H, settings: Mapping[str, Any]) -> np.ndarray:
    """Importance scores from a hidden-state stack ``H`` (L+1, N, T, D) of calibration clips
    (index 0 = input of block 0): length-L block influences (``block_influence``,
    ``knn_block_influence``; block l = change from h_l to h_l+1) or the (L+1, L+1) angular
    distance matrix (``angular_block``) - the entry's ``scores`` function."""
    spec = get(strategy)
    if spec.scores is None:
        raise ValueError(f"strategy {strategy!r} takes no scores from the cache")
    return spec.compute_scores(H, settings)


def _nested(order: Sequence[int], L: int) -> list[list[int]]:
    order = [int(i) for i in order]
    if len(order) < L - 1:
        raise ValueError(f"removal order {order} too short for {L} layers")
    return [sorted(order[:n]) for n in range(L)]


def _scores_vector(scores, L: int, what: str) -> np.ndarray:
    if scores is None:
        raise ValueError(f"strategy {what!r} needs scores")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (L,):
        raise ValueError(
            f"{what}: expected one score per block, shape ({L},) (block l = change from h_l to "
            f"h_l+1, computed on L+1 hidden states incl. the stack input); got {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what}: scores must be finite, got {s}")
    return s


# ----------------------------------------------------------------------------------------
# The built-in strategies
# ----------------------------------------------------------------------------------------
@register("forward", keep_first=True)
def forward(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """Lowest blocks first (from block 1 with ``keep_first``)."""
    return _nested(range(1 if keep_first else 0, L), L)


@register("backward")
def backward(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """Top blocks first."""
    return _nested(range(L - 1, -1, -1), L)


@register("forward_backward", keep_first=True)
def forward_backward(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """Alternating ends: lowest, top, next lowest, next top, ..."""
    lo, hi, order, take_low = 1 if keep_first else 0, L - 1, [], True
    while lo <= hi:
        if take_low:
            order.append(lo)
            lo += 1
        else:
            order.append(hi)
            hi -= 1
        take_low = not take_low
    return _nested(order, L)


def _score_order(scores, L: int, keep_first: bool, what: str) -> list[list[int]]:
    """Ascending per-block scores (ties: lower index); block 0 skipped with ``keep_first``."""
    s = _scores_vector(scores, L, what)
    first = 1 if keep_first else 0
    return _nested([int(i) for i in np.argsort(s, kind="stable") if i >= first], L)


@register(
    "block_influence",
    scores="workflow_scripts.pruning.scores:block_influence",
    defaults={"variant": "sequence"},
    schema={"variant": {"enum": ["sequence", "per_token"],
                        "description": "sequence = flattened frames x dims (the paper); "
                                       "per_token = ShortGPT's per-token mean"}},
)  # fmt: skip
def block_influence(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """Least influential blocks first: ShortGPT block influence 1 - cos(h_l, h_l+1)."""
    return _score_order(scores, L, keep_first, "block_influence")


@register(
    "knn_block_influence",
    scores="workflow_scripts.pruning.scores:knn_block_influence",
    defaults={"ks": [2, 4, 8, 16, 32, 64], "normalize": True},
    schema={"ks": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                   "description": "neighbourhood sizes the overlap is averaged over"},
            "normalize": {"type": "boolean", "description": "unit-normalise states first"}},
)  # fmt: skip
def knn_block_influence(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """Least influential blocks first, influence = 1 - mutual-kNN(h_l, h_l+1) from the cache."""
    return _score_order(scores, L, keep_first, "knn_block_influence")


@register(
    "angular_block",
    scores="workflow_scripts.pruning.scores:angular_distances",
    defaults={"reduce": "last"},
    schema={"reduce": {"enum": ["last", "mean", "all", "flatten"],
                       "description": "frame(s) the distance uses (last = Gromov's last token)"}},
)  # fmt: skip
def angular_block(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """Gromov et al. 2024: per n, the contiguous run l*..l*+n-1 with the smallest angular
    distance d(h_l, h_l+n)."""
    D = np.asarray(scores, dtype=np.float64)
    if D.shape != (L + 1, L + 1):
        raise ValueError(
            f"angular_block needs an ({L + 1}, {L + 1}) distance matrix over hidden states "
            f"h_0..h_L, got {D.shape}"
        )
    lo = 1 if keep_first else 0
    sets: list[list[int]] = [[]]
    for n in range(1, L):
        starts = list(range(lo, L - n + 1))
        if not starts:
            raise ValueError(f"no contiguous block of {n} layers available")
        d = np.array([D[s, s + n] for s in starts])
        if not np.all(np.isfinite(d)):
            raise ValueError("angular distances must be finite")
        best = starts[int(np.argmin(d))]  # ties: lowest start
        sets.append(list(range(best, best + n)))
    return sets


@register(
    "similarity_greedy",
    evaluator="workflow_scripts.pruning.sweeps:similarity_evaluator",
    defaults={"clips": 64, "metric": "cosine", "batch_size": 64},
    schema={
        "clips": {"type": "integer", "minimum": 2,
                  "description": "validation clips the evaluator runs (cost linear in it)"},
        "metric": {"enum": ["cosine", "mse"]},
        "batch_size": {"type": "integer", "minimum": 1},
    },
)  # fmt: skip
def similarity_greedy(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """Greedily add the block whose removal (with those already removed) changes the final
    representation least on validation clips run through the model."""
    if evaluator is None:
        raise ValueError("similarity_greedy needs an evaluator (see SimilarityEvaluator)")
    removed: list[int] = []
    for _ in range(L - 1):
        cands = [j for j in range(L) if j not in removed and not (keep_first and j == 0)]
        costs = np.asarray(evaluator([sorted([*removed, j]) for j in cands]), dtype=np.float64)
        if costs.shape != (len(cands),) or not np.all(np.isfinite(costs)):
            raise ValueError(f"evaluator returned {costs} for {len(cands)} candidates")
        removed.append(cands[int(np.argmin(costs))])  # ties: lowest index
    return _nested(removed, L)


@register(
    "random",
    seeded=True,
    defaults={"seeds": [0, 1, 2]},
    schema={"seeds": {"type": "array", "items": {"type": "integer", "minimum": 0},
                      "minItems": 1, "uniqueItems": True,
                      "description": "one removal order per seed, plus their mean"}},
)  # fmt: skip
def random_order(L: int, keep_first: bool, *, scores=None, evaluator=None, seed: int = 0):
    """A seeded random permutation of the blocks (block 0 excluded with ``keep_first``)."""
    rng = np.random.default_rng(seed)
    return _nested([int(i) for i in rng.permutation(np.arange(1 if keep_first else 0, L))], L)
