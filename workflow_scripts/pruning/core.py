"""Layer pruning of speech-transformer classifiers: delete whole transformer blocks, keep the head.

Models are ``transformers`` audio classifiers (``Wav2Vec2`` / ``Hubert`` / ``WavLM``
``ForSequenceClassification``): conv feature encoder -> feature projection -> encoder (positional
conv, layer norm, ``encoder.layers``; the "stable layer norm" variant applies its layer norm after
the last block instead) -> projector -> mean over (valid) frames -> classifier. Pruning deletes
blocks of ``encoder.layers``; nothing is retrained (except by the optional :func:`heal_with_lora`).

Layer indices
    ``0 .. L-1`` index ``encoder.layers`` of the model handed in. Hidden state ``h_l``
    (``l = 0..L``) is the input to block ``l`` (``h_0`` = what the stack receives, ``h_L`` =
    output of the last block), as in ``output_hidden_states``. The block influence of block
    ``l`` is about the transformation done by block ``l``, i.e. between ``h_l`` and ``h_{l+1}``:
    a score vector has length ``L`` (``similarity.block_influence`` of an ``(L+1)``-state stack
    gives exactly that).

WavLM and layer 0
    Only WavLM's block 0 owns the relative-position-bias table (``attention.rel_attn_embed``);
    the bias it computes is handed from block to block and every block gates it with its own
    parameters. The table is an embedding of positions, not part of block 0's transformation,
    so :func:`remove_layers` *allows* removing block 0: the table is moved into the new first
    block (which is where ``from_pretrained`` expects it, so the saved model loads as an ordinary
    WavLM with fewer layers). Block 0's own weights (attention, gates, FFN) are deleted. The
    parameter count therefore falls by exactly one ordinary block per removed block.
    The paper's ``forward`` strategy keeps block 0 anyway.

Importance scores
    Scores for ``block_influence`` / ``knn_block_influence`` / ``angular_block`` and the
    ``similarity_greedy`` evaluator are computed by the caller on a *calibration* split (e.g.
    validation clips) that is distinct from the test split the sweep reports accuracy on;
    otherwise the removal order is tuned on the test data.

Prefix resumption
    Every removal set shares with the unpruned model the blocks below its smallest removed index
    (more generally, sets share the common prefix of their kept-block sequences). A
    :class:`PrefixCache` computes the conv front end, the feature projection, the positional
    embedding and the attention-mask handling once per batch, then walks a trie of kept-block
    sequences depth first, so every distinct kept prefix is computed once. Logits equal those
    of a full forward of :func:`remove_layers` (same modules, same inputs).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from workflow_scripts.backbones.finetune import accuracy_report, autocast
from workflow_scripts.backbones.registry import count_parameters, encoder_of, normalize_audio
from workflow_scripts.core.timing import measure_latency

STRATEGIES = (
    "forward",
    "backward",
    "forward_backward",
    "block_influence",
    "knn_block_influence",
    "angular_block",
    "similarity_greedy",
    "random",
)

# Strategies whose default keeps block 0 (the paper's forward strategy starts at block 1).
_KEEP_FIRST_DEFAULT = {"forward": True, "forward_backward": True}


# ----------------------------------------------------------------------------------------
# Physical removal
# ----------------------------------------------------------------------------------------
def _stack(model) -> nn.ModuleList:
    return encoder_of(model).encoder.layers


def n_layers(model) -> int:
    """Number of transformer blocks in ``model``."""
    return len(_stack(model))


def _is_wavlm(model) -> bool:
    return getattr(model.config, "model_type", "") == "wavlm"


def _check_supported(model) -> None:
    if getattr(model.config, "use_weighted_layer_sum", False):
        raise ValueError(
            "use_weighted_layer_sum=True heads mix all hidden states; layer removal is only "
            "defined here for the last-hidden-state head"
        )


def _validate_indices(indices: Sequence[int], L: int) -> list[int]:
    raw = [int(i) for i in indices]
    idx = sorted(set(raw))
    if len(idx) != len(raw):
        raise ValueError(f"duplicate layer indices in {raw}")
    if idx and (idx[0] < 0 or idx[-1] >= L):
        raise ValueError(f"layer indices {idx} out of range for {L} layers")
    if len(idx) >= L:
        raise ValueError(f"cannot remove all {L} layers (at least one must remain)")
    return idx


def transformer_parameters(model) -> int:
    """Parameters inside ``encoder.layers`` (the transformer blocks only)."""
    return count_parameters(_stack(model))


def remove_layers(model, indices: Sequence[int]):
    """A deep copy of ``model`` with the blocks ``indices`` (into ``encoder.layers``) deleted.

    ``config.num_hidden_layers`` is updated, the head (projector, classifier) is kept unchanged,
    the input model is not modified. ``config.kept_layer_ids`` records, for each remaining block,
    its index in the model first pruned (so repeated pruning keeps the original numbering).
    For WavLM, removing block 0 moves its relative-position-bias table into the new first block
    (see module docstring). At least one block must remain.
    """
    _check_supported(model)
    L = n_layers(model)
    idx = _validate_indices(indices, L)
    new = copy.deepcopy(model)
    layers = _stack(new)
    keep = [i for i in range(L) if i not in set(idx)]
    if _is_wavlm(new) and 0 in idx:
        table = layers[0].attention.rel_attn_embed
        first = layers[keep[0]].attention
        if hasattr(first, "rel_attn_embed"):
            raise RuntimeError("WavLM block already owns a relative position table")
        del layers[0].attention.rel_attn_embed
        first.rel_attn_embed = table
    encoder_of(new).encoder.layers = nn.ModuleList([layers[i] for i in keep])
    old_ids = list(getattr(new.config, "kept_layer_ids", None) or range(L))
    configs = {id(new.config): new.config}
    for module in new.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            configs[id(cfg)] = cfg
    for cfg in configs.values():
        cfg.num_hidden_layers = len(keep)
        cfg.kept_layer_ids = [int(old_ids[i]) for i in keep]
    return new


# ----------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------
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


def _angular_sets(D, L: int, keep_first: bool) -> list[list[int]]:
    D = np.asarray(D, dtype=np.float64)
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


def _greedy_sets(evaluator, L: int, keep_first: bool) -> list[list[int]]:
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
      :class:`SimilarityEvaluator` built on calibration clips). Ties: lowest index.
    * ``random``: a seeded permutation (``numpy.random.default_rng(seed)``); nested sets.

    ``keep_first`` (default: True for forward/forward_backward, else False) excludes block 0.
    Scores must come from a calibration split distinct from the test split.
    """
    L = int(n_layers)
    if L < 1:
        raise ValueError("n_layers must be >= 1")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {list(STRATEGIES)}")
    kf = _KEEP_FIRST_DEFAULT.get(strategy, False) if keep_first is None else bool(keep_first)
    first = 1 if kf else 0
    if strategy == "forward":
        return _nested(range(first, L), L)
    if strategy == "backward":
        return _nested(range(L - 1, -1, -1), L)
    if strategy == "forward_backward":
        lo, hi, order, take_low = first, L - 1, [], True
        while lo <= hi:
            if take_low:
                order.append(lo)
                lo += 1
            else:
                order.append(hi)
                hi -= 1
            take_low = not take_low
        return _nested(order, L)
    if strategy in ("block_influence", "knn_block_influence"):
        s = _scores_vector(scores, L, strategy)
        order = [int(i) for i in np.argsort(s, kind="stable") if i >= first]
        return _nested(order, L)
    if strategy == "angular_block":
        return _angular_sets(scores, L, kf)
    if strategy == "similarity_greedy":
        return _greedy_sets(evaluator, L, kf)
    rng = np.random.default_rng(seed)
    return _nested([int(i) for i in rng.permutation(np.arange(first, L))], L)


# ----------------------------------------------------------------------------------------
# Prefix resumption
# ----------------------------------------------------------------------------------------
class _FrontCaptured(Exception):
    pass


class PrefixCache:
    """Front end of one batch computed once; resume at any block for any set of removals.

    ``input_values``: normalised waveforms (B, samples) already on the model's device;
    ``attention_mask`` (B, samples) optional, as for the model itself. The model must be in
    eval mode. The state entering block 0 (after positional conv embedding, the encoder layer
    norm in the non-stable variant, and zeroing of padded frames) and the keyword arguments the
    encoder hands its blocks (the processed attention mask) are captured from the model's own
    forward, stopped at block 0; for WavLM the relative position bias is computed once from the
    block owning the table and passed to every block (block 0 would compute the same values).

    :meth:`run` takes removal sets (indices into ``encoder.layers``) and walks the trie of their
    kept-block sequences depth first: each distinct prefix is computed once, so a set whose
    smallest removed index is m reuses blocks 0..m-1 of the unpruned pass.
    """

    def __init__(
        self, model, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ):
        _check_supported(model)
        if model.training:
            raise ValueError("PrefixCache needs the model in eval mode (call model.eval())")
        self.model = model
        self.base = encoder_of(model)
        self.layers = self.base.encoder.layers
        self.attention_mask = attention_mask
        self.wavlm = _is_wavlm(model)
        self.stable = bool(getattr(model.config, "do_stable_layer_norm", False))
        captured: dict = {}

        def grab(module, args, kwargs):
            captured["args"] = args
            captured["kwargs"] = dict(kwargs)
            raise _FrontCaptured

        handle = self.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.inference_mode(), autocast(input_values.device):
                model(input_values, attention_mask=attention_mask)
        except _FrontCaptured:
            pass
        finally:
            handle.remove()
        if "kwargs" not in captured:
            raise RuntimeError("the model never reached encoder.layers[0]")
        kwargs = captured["kwargs"]
        args = captured["args"]
        self.h0 = args[0] if args else kwargs.pop("hidden_states")
        self.layer_kwargs = kwargs
        self.position_bias = None
        if self.wavlm:
            owner = [
                lay.attention for lay in self.layers if hasattr(lay.attention, "rel_attn_embed")
            ]
            if len(owner) != 1:
                raise RuntimeError("expected exactly one WavLM block with a position table")
            att = owner[0]
            B, T = self.h0.shape[:2]
            with torch.inference_mode():
                pb = att.compute_bias(T, T)
                self.position_bias = (
                    pb.unsqueeze(0).repeat(B, 1, 1, 1).view(B * att.num_heads, T, T)
                )
            self.layer_kwargs.pop("position_bias", None)

    def _block(self, i: int, depth: int, h: torch.Tensor) -> torch.Tensor:
        kw = dict(self.layer_kwargs)
        if "index" in kw:
            kw["index"] = depth
        if self.wavlm:
            h, _ = self.layers[i](h, position_bias=self.position_bias, **kw)
            return h
        out = self.layers[i](h, **kw)
        return out[0] if isinstance(out, tuple) else out

    def final_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder output (input to the projector) from the last kept block's output."""
        if self.stable:
            h = self.base.encoder.layer_norm(h)
        if getattr(self.base, "adapter", None) is not None:
            h = self.base.adapter(h)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the encoder output, exactly as the model's classification head."""
        m = self.model
        h = m.projector(h)
        if self.attention_mask is None:
            pooled = h.mean(dim=1)
        else:
            pm = m._get_feature_vector_attention_mask(h.shape[1], self.attention_mask)
            h[~pm.unsqueeze(-1).repeat(1, 1, h.shape[2])] = 0.0
            pooled = h.sum(dim=1) / pm.sum(dim=1).view(-1, 1)
        return m.classifier(pooled)

    def frame_mask(self) -> torch.Tensor | None:
        """Valid-frame mask (B, T) or None without an attention mask."""
        if self.attention_mask is None:
            return None
        return self.model._get_feature_vector_attention_mask(self.h0.shape[1], self.attention_mask)

    def run(self, removal_sets: Sequence[Sequence[int]], output: str = "logits") -> list:
        """Per removal set, ``output="logits"`` (B, classes) or ``"hidden"`` (B, T, D), the
        encoder output after the last kept block (and the final layer norm if stable)."""
        if output not in ("logits", "hidden"):
            raise ValueError(f"unknown output {output!r}")
        L = len(self.layers)
        trie: dict = {"children": {}, "ends": []}
        for k, s in enumerate(removal_sets):
            drop = set(_validate_indices(s, L))
            node = trie
            for i in range(L):
                if i not in drop:
                    node = node["children"].setdefault(i, {"children": {}, "ends": []})
            node["ends"].append(k)
        results: list = [None] * len(removal_sets)

        def visit(node: dict, h: torch.Tensor, depth: int) -> None:
            if node["ends"]:
                out = self.final_hidden(h)
                if output == "logits":
                    out = self.head(out)
                for k in node["ends"]:
                    results[k] = out
            for i, child in node["children"].items():
                visit(child, self._block(i, depth, h), depth + 1)

        with torch.inference_mode(), autocast(self.h0.device):
            visit(trie, self.h0, 0)
        return results


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def sweep_logits(
    model,
    audio,
    removal_sets: Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    attention_mask=None,
) -> np.ndarray:
    """Logits (S, N, classes) for every removal set, with prefix resumption.

    ``audio`` float32 clips (N, samples) (numpy or torch), normalised per utterance like
    :func:`finetune.predict` (over the valid samples when ``attention_mask`` is given). Same
    batching and autocast as ``predict``, so the empty set reproduces ``predict`` exactly.
    """
    device = torch.device(device)
    model.eval()
    x_all = _as_tensor(audio).float()
    m_all = None if attention_mask is None else _as_tensor(attention_mask).long()
    per_set: list[list[np.ndarray]] = [[] for _ in removal_sets]
    for start in range(0, len(x_all), batch_size):
        m = None if m_all is None else m_all[start : start + batch_size]
        x = normalize_audio(x_all[start : start + batch_size], m).to(device)
        cache = PrefixCache(model, x, None if m is None else m.to(device))
        for k, lg in enumerate(cache.run(removal_sets)):
            per_set[k].append(lg.float().cpu().numpy())
    C = model.config.num_labels
    return np.stack([np.concatenate(p) if p else np.zeros((0, C), np.float32) for p in per_set])


class SimilarityEvaluator:
    """Cost of removal sets = how much the final representation changes, on calibration clips.

    The front state of every calibration batch and the unpruned encoder output are computed once;
    a call evaluates a list of removal sets with prefix resumption (one trie walk per batch).
    ``metric="cosine"``: mean over utterances of 1 - cos between the flattened (frames x dims)
    encoder outputs of the pruned and the unpruned model (padded frames zeroed);
    ``metric="mse"``: mean squared difference over valid frames. Use calibration clips, not the
    test split. Pass it as ``evaluator`` to :func:`removal_sets` with ``"similarity_greedy"``.
    """

    def __init__(
        self,
        model,
        audio,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        metric: str = "cosine",
        attention_mask=None,
    ):
        if metric not in ("cosine", "mse"):
            raise ValueError(f"unknown metric {metric!r}")
        self.metric = metric
        device = torch.device(device)
        model.eval()
        x_all = _as_tensor(audio).float()
        m_all = None if attention_mask is None else _as_tensor(attention_mask).long()
        self.caches: list[PrefixCache] = []
        self.refs: list[torch.Tensor] = []
        self.n_calls = 0
        for start in range(0, len(x_all), batch_size):
            m = None if m_all is None else m_all[start : start + batch_size]
            x = normalize_audio(x_all[start : start + batch_size], m).to(device)
            cache = PrefixCache(model, x, None if m is None else m.to(device))
            self.caches.append(cache)
            self.refs.append(self._masked(cache, cache.run([[]], output="hidden")[0]))

    @staticmethod
    def _masked(cache: PrefixCache, h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        fm = cache.frame_mask()
        return h if fm is None else h * fm.unsqueeze(-1).to(h.dtype)

    def __call__(self, removal_sets: Sequence[Sequence[int]]) -> list[float]:
        self.n_calls += 1
        totals = np.zeros(len(removal_sets))
        n = 0
        for cache, ref in zip(self.caches, self.refs, strict=True):
            outs = cache.run(removal_sets, output="hidden")
            with torch.inference_mode():
                for k, h in enumerate(outs):
                    h = self._masked(cache, h)
                    if self.metric == "cosine":
                        a = h.flatten(1)
                        b = ref.flatten(1)
                        cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
                        totals[k] += float((1.0 - cos).sum())
                    else:
                        fm = cache.frame_mask()
                        frames = h.shape[1] if fm is None else fm.sum(1).clamp_min(1)
                        err = ((h - ref) ** 2).sum((1, 2)) / (frames * h.shape[2])
                        totals[k] += float(err.sum())
            n += ref.shape[0]
        return list(totals / max(n, 1))


# ----------------------------------------------------------------------------------------
# Sweep
# ----------------------------------------------------------------------------------------
def sweep(
    model,
    audio: np.ndarray,
    labels: np.ndarray,
    strategy: str,
    removal_sets: Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    latency: bool = True,
    latency_warmup: int = 3,
    latency_repeats: int = 10,
) -> list[dict]:
    """One row per removal set: accuracy with bootstrap CI, relative accuracy, size, latency.

    Accuracy comes from :func:`sweep_logits` (prefix resumption; identical to predicting with the
    physically pruned model); the empty set reproduces the unpruned ``predict`` exactly.
    ``relative_accuracy`` = accuracy / accuracy of the unpruned model (NaN when that is 0).
    Parameter counts are of the physically pruned model (:func:`remove_layers`);
    ``latency_ms`` is the median of ``timing.measure_latency`` over one batch of the first
    ``batch_size`` clips through the pruned model (NaN with ``latency=False``).
    """
    device = torch.device(device)
    labels = np.asarray(labels)
    sets = [sorted(int(i) for i in s) for s in removal_sets]
    logits = sweep_logits(model, audio, [[], *sets], device, batch_size)
    C = model.config.num_labels
    base_acc = accuracy_report(logits[0], labels, C)["accuracy"]
    L = n_layers(model)
    x_lat = normalize_audio(_as_tensor(audio[:batch_size]).float()).to(device)
    rows = []
    for k, s in enumerate(sets):
        rep = accuracy_report(logits[k + 1], labels, C)
        pruned = remove_layers(model, s).to(device).eval()
        row = {
            "strategy": strategy,
            "n_removed": len(s),
            "removed": s,
            "layers_remaining": L - len(s),
            "fraction_removed": len(s) / L,
            "accuracy": rep["accuracy"],
            "ci_lo": rep["ci_lo"],
            "ci_hi": rep["ci_hi"],
            "n_utterances": rep["n"],
            "per_class_accuracy": rep["per_class_accuracy"],
            "relative_accuracy": rep["accuracy"] / base_acc if base_acc > 0 else math.nan,
            "transformer_params": transformer_parameters(pruned),
            "total_params": count_parameters(pruned),
            "latency_ms": math.nan,
            "latency_min_ms": math.nan,
            "latency_batch_size": int(x_lat.shape[0]),
            "latency_device": str(device),
        }
        if latency:

            def fn(p=pruned):
                with autocast(device):
                    return p(x_lat)

            lat = measure_latency(fn, device, latency_warmup, latency_repeats)
            row.update(latency_ms=lat["median_ms"], latency_min_ms=lat["min_ms"])
        rows.append(row)
        del pruned
    return rows


# ----------------------------------------------------------------------------------------
# Healing
# ----------------------------------------------------------------------------------------
def lora_target_modules(model) -> list[str]:
    """Default LoRA targets: the attention query/value projections of every remaining block.

    WavLM's attention calls ``F.multi_head_attention_forward`` with ``q_proj.weight`` etc.
    directly, which bypasses a LoRA wrapper around ``q_proj``/``v_proj``; for WavLM the FFN
    projections (``feed_forward.intermediate_dense``/``output_dense``) are adapted instead.
    """
    if _is_wavlm(model):
        return ["feed_forward.intermediate_dense", "feed_forward.output_dense"]
    return ["attention.q_proj", "attention.v_proj"]


def heal_with_lora(
    pruned_model,
    audio: np.ndarray,
    labels: np.ndarray,
    steps: int = 100,
    lr: float = 1e-4,
    rank: int = 8,
    alpha: float = 16.0,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    seed: int = 0,
    target_modules: Sequence[str] | None = None,
    log=None,
):
    """LoRA healing (Moumen et al.) of a pruned classifier; returns a new, merged model.

    Trains LoRA adapters (``peft``) on ``target_modules`` (default :func:`lora_target_modules`,
    names relative to each block of ``encoder.layers``) with cross entropy on the given
    *training-split* clips for ``steps`` AdamW steps of ``batch_size`` random clips; everything
    else (conv front end, head) stays frozen. The adapters are merged, so the result is a
    plain model with the same blocks and parameter count. The input model is not modified.
    Raises RuntimeError if the targets get no gradient (a forward that bypasses the wrappers).
    """
    from peft import LoraConfig, get_peft_model

    device = torch.device(device)
    L = n_layers(pruned_model)
    names = list(target_modules or lora_target_modules(pruned_model))
    alt = "|".join(n.replace(".", r"\.") for n in names)
    regex = rf".*encoder\.layers\.\d+\.({alt})"
    model = copy.deepcopy(pruned_model).to(device)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=regex, bias="none")
    peft_model = get_peft_model(model, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"no LoRA parameters created for targets {names}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    x_all = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(labels)).long()
    bs = min(batch_size, len(x_all))
    peft_model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(x_all), size=bs, replace=False))
        x = normalize_audio(x_all[idx]).to(device)
        with autocast(device):
            loss = peft_model(input_values=x, labels=y_all[idx].to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0 and all(p.grad is None for p in params):
            raise RuntimeError(
                f"LoRA targets {names} receive no gradient: the model's forward bypasses them "
                "(e.g. WavLM attention uses q_proj.weight directly)"
            )
        opt.step()
        if log is not None and (step % 10 == 0 or step == steps - 1):
            log(f"heal step {step}: loss {float(loss):.4f}")
    healed = peft_model.merge_and_unload()
    healed.eval()
    if n_layers(healed) != L:
        raise RuntimeError("healing changed the number of blocks")
    return healed


__all__ = [
    "STRATEGIES",
    "PrefixCache",
    "SimilarityEvaluator",
    "heal_with_lora",
    "lora_target_modules",
    "n_layers",
    "remove_layers",
    "removal_sets",
    "sweep",
    "sweep_logits",
    "transformer_parameters",
]
