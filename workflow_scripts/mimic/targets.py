"""Which teacher layers a mimicker's outputs predict (torch-free).

Targets use *hidden-state indices*, the convention of :mod:`workflow_scripts.similarity` and of
``output_hidden_states``: index 0 is the input of the first transformer block, index ``i``
(1..L) the output of block ``i``; the last layer is ``L`` = ``n_layers``. With ``depth`` 2 the
first output predicts an intermediate layer (from a similarity block, explicit, or evenly
spaced) and the second the last layer; with ``depth`` 0 or 1 the one output predicts ``L``.
"""

from __future__ import annotations

from collections.abc import Sequence

from workflow_scripts.backbones.plan import layer_fraction


def choose_targets(
    depth: int,
    n_layers: int,
    blocks: Sequence[Sequence[int]] | None = None,
    explicit: Sequence[int] | None = None,
    pick: str = "last",
) -> list[int]:
    """Hidden-state indices (0 = stack input, ``n_layers`` = last block) the ``depth``
    outputs of a mimicker are trained to predict.

    * ``explicit`` (overrides everything): must have ``max(depth, 1)`` strictly increasing
      indices in ``0..n_layers``.
    * depth 0 or 1: ``[n_layers]``.
    * depth >= 2 with ``blocks`` (inclusive ``(start, end)`` ranges of hidden-state indices
      from a block detector): one layer from each of the first ``depth - 1`` blocks that lie
      before the last layer (``pick``: the block's "last" (default), "first" or "middle"
      layer; index 0, the stack input, is never chosen), then ``n_layers``. A detector that
      found too few blocks raises a ``ValueError`` (use a smaller depth or ``explicit``).
    * depth >= 2 without ``blocks``: evenly spaced,
      :func:`~workflow_scripts.backbones.plan.layer_fraction` ``(k, depth, n_layers)`` for
      k = 1..depth-1, then ``n_layers``.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    n_out = max(depth, 1)
    if explicit is not None:
        idx = [int(i) for i in explicit]
        if len(idx) != n_out:
            raise ValueError(
                f"a depth-{depth} mimicker needs {n_out} target layer(s), got {len(idx)}: {idx}"
            )
        bad = [i for i in idx if not 0 <= i <= n_layers]
        if bad:
            raise ValueError(
                f"target layer(s) {bad} out of range: hidden-state indices run 0..{n_layers} "
                f"(0 = stack input, {n_layers} = last of {n_layers} blocks)"
            )
        if any(b <= a for a, b in zip(idx, idx[1:], strict=False)):
            raise ValueError(f"target layers must be strictly increasing, got {idx}")
        return idx
    if depth <= 1:
        return [n_layers]
    if blocks is None:
        return [layer_fraction(k, depth, n_layers) for k in range(1, depth)] + [n_layers]
    if pick not in ("last", "first", "middle"):
        raise ValueError(f"pick must be 'last', 'first' or 'middle', got {pick!r}")
    spans = []
    for b in blocks:
        if len(b) != 2:
            raise ValueError(f"a block is an inclusive (start, end) pair, got {b!r}")
        s, e = int(b[0]), int(b[1])
        if not 0 <= s <= e <= n_layers:
            raise ValueError(
                f"block ({s}, {e}) is not a valid inclusive range within 0..{n_layers}"
            )
        spans.append((s, e))
    spans.sort()
    chosen: list[int] = []
    for s, e in spans:
        lo = max(s, 1)  # never the stack input
        if lo > e:
            continue
        layer = {"last": e, "first": lo, "middle": (lo + e) // 2}[pick]
        if layer >= n_layers or (chosen and layer <= chosen[-1]):
            continue
        chosen.append(layer)
        if len(chosen) == depth - 1:
            break
    if len(chosen) < depth - 1:
        raise ValueError(
            f"a depth-{depth} mimicker needs {depth - 1} intermediate target(s) from blocks "
            f"before the last layer, but blocks {spans} give only {chosen}; use a smaller "
            "depth or explicit targets"
        )
    return chosen + [n_layers]


def target_layers(
    depth: int, n_layers: int, model: str, targets_cfg: dict | None, blocks=None
) -> tuple[list[int], str]:
    """(hidden-state indices the mimicker's outputs predict, how they were chosen).

    depth 0/1: ``[n_layers]``. depth 2: ``targets_cfg`` is the cell's ``targets`` slice:
    ``{"layer": i}`` (explicit), ``{"metric": None}`` (evenly spaced) or ``{"metric", "pick",
    "fallback"}`` with ``blocks`` the blocks table (columns model, metric, first_state,
    last_state, n_states; state 0 = the stack's input), from which :func:`choose_targets`
    takes a layer of the first block before the last layer. When the blocks have none there,
    ``fallback`` "even" uses the evenly spaced layer (and says so in the returned source),
    "error" raises.
    """
    if depth <= 1:
        return choose_targets(depth, n_layers), "last"
    t = targets_cfg or {"metric": None}
    if "layer" in t:
        return choose_targets(depth, n_layers, explicit=[t["layer"], n_layers]), "explicit"
    metric = t.get("metric")
    if metric is None:
        return choose_targets(depth, n_layers), "even"
    if blocks is None:
        raise ValueError("targets from similarity blocks need the blocks table")
    rows = blocks[(blocks.model == model) & (blocks.metric == metric)]
    if rows.empty:
        raise ValueError(
            f"the blocks table has no blocks of model {model!r} for metric {metric!r} (add the "
            "metric to similarity.metrics, or set mimic.targets.metric / mimic.targets.layers)"
        )
    if "n_states" in rows and int(rows.n_states.iloc[0]) != n_layers + 1:
        raise ValueError(
            f"the blocks table of model {model!r} covers {int(rows.n_states.iloc[0])} hidden "
            f"states, the model has {n_layers + 1}: the blocks table is stale"
        )
    spans = sorted(zip(rows.first_state.astype(int), rows.last_state.astype(int), strict=True))
    pick = t.get("pick", "last")
    try:
        return choose_targets(depth, n_layers, spans, pick=pick), f"blocks:{metric}:{pick}"
    except ValueError as err:
        if t.get("fallback", "even") == "error":
            raise
        even = choose_targets(depth, n_layers)
        return even, f"even (fallback: {metric} blocks {[list(s) for s in spans]}: {err})"


def blocks_of(inputs):
    """The blocks tables a cache job's ``inputs`` (name -> path) hold as ``blocks_{metric}``,
    concatenated into one DataFrame; None without any."""
    import pandas as pd

    tables = [pd.read_csv(p) for k, p in inputs.items() if k.startswith("blocks_")]
    return pd.concat(tables, ignore_index=True) if tables else None


def block_target_states(specs, n_layers: int, model: str, blocks) -> list[int]:
    """The intermediate hidden states that the mimic cells of ``model`` whose target comes
    from the similarity blocks will be trained to predict: :func:`target_layers` of each spec
    (``{"depth", "metric", "pick", "fallback"}``, ``backbones.cache_plan.cache_store``'s
    ``block_targets``) on the blocks table ``blocks``, the last layer left out. What the
    training-split cache stores for them, so the cells read the very states an all-states
    cache would give them. A spec whose blocks give no target and may not fall back (or a
    table without this model's blocks) adds nothing: the mimic cell stops with that error."""
    if specs and blocks is None:
        raise ValueError("the mimickers' block targets need the blocks table")
    out: set[int] = set()
    for spec in specs:
        cfg = {k: v for k, v in spec.items() if k != "depth"}
        try:
            layers, _ = target_layers(int(spec["depth"]), n_layers, model, cfg, blocks)
        except ValueError:
            continue
        out.update(layers[:-1])
    return sorted(out)
