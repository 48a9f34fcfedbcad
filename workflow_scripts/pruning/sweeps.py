"""Accuracy sweeps over removal sets with prefix resumption, and the similarity evaluator.

Prefix resumption
    Every removal set shares with the unpruned model the blocks below its smallest removed index
    (more generally, sets share the common prefix of their kept-block sequences). A
    :class:`PrefixCache` computes the conv front end, the feature projection, the positional
    embedding and the attention-mask handling once per batch, then walks a trie of kept-block
    sequences depth first, so every distinct kept prefix is computed once. Logits equal those
    of a full forward of :func:`~workflow_scripts.pruning.layers.remove_layers` (same modules,
    same inputs).

Importance scores
    The ``similarity_greedy`` evaluator (:class:`SimilarityEvaluator`) and the cache scores are
    computed on a *calibration* split (e.g. validation clips) that is distinct from the test
    split the sweep reports accuracy on; otherwise the removal order is tuned on the test data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from workflow_scripts.backbones.clips import as_clips
from workflow_scripts.backbones.evaluate import autocast, prediction_report
from workflow_scripts.backbones.registry import count_parameters, encoder_of, normalize_audio
from workflow_scripts.core.retained import retained_intervals
from workflow_scripts.core.timing import compare_latency
from workflow_scripts.pruning.layers import (
    check_supported,
    is_wavlm,
    n_layers,
    remove_layers,
    transformer_parameters,
    validate_indices,
)


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
        check_supported(model)
        if model.training:
            raise ValueError("PrefixCache needs the model in eval mode (call model.eval())")
        self.model = model
        self.base = encoder_of(model)
        self.layers = self.base.encoder.layers
        self.attention_mask = attention_mask
        self.wavlm = is_wavlm(model)
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
            drop = set(validate_indices(s, L))
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


def _set_logits(model, x: torch.Tensor, m, removal_sets, device) -> list[np.ndarray]:
    """Per removal set, the float32 logits (b, classes) of one batch of clips ``x`` (mask
    ``m`` or None), normalised per utterance like ``predict``."""
    x = normalize_audio(x, m).to(device)
    cache = PrefixCache(model, x, None if m is None else m.to(device))
    return [lg.float().cpu().numpy() for lg in cache.run(removal_sets)]


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
    :func:`~workflow_scripts.backbones.evaluate.predict` (over the valid samples when
    ``attention_mask`` is given). Same batching and autocast as ``predict``, so the empty set
    reproduces ``predict`` exactly.
    """
    device = torch.device(device)
    model.eval()
    x_all = _as_tensor(audio).float()
    m_all = None if attention_mask is None else _as_tensor(attention_mask).long()
    per_set: list[list[np.ndarray]] = [[] for _ in removal_sets]
    for start in range(0, len(x_all), batch_size):
        m = None if m_all is None else m_all[start : start + batch_size]
        x = x_all[start : start + batch_size]
        for k, lg in enumerate(_set_logits(model, x, m, removal_sets, device)):
            per_set[k].append(lg)
    C = model.config.num_labels
    return np.stack([np.concatenate(p) if p else np.zeros((0, C), np.float32) for p in per_set])


def sweep_predictions(
    model, batches: Iterable, removal_sets: Sequence[Sequence[int]], device="cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes (S, N), labels (N,)) for every removal set over ``batches`` of
    (audio, labels, ...) read one at a time: the argmax of :func:`sweep_logits`' logits with
    the same batches, without holding the clips or the logits of all of them."""
    device = torch.device(device)
    model.eval()
    per_set: list[list[np.ndarray]] = [[] for _ in removal_sets]
    labels = []
    for audio, y, *_ in batches:
        for k, lg in enumerate(_set_logits(model, _as_tensor(audio).float(), None,
                                           removal_sets, device)):  # fmt: skip
            per_set[k].append(lg.argmax(1))
        labels.append(np.asarray(y))
    if not labels:
        return np.zeros((len(removal_sets), 0), np.int64), np.zeros(0, np.int64)
    return np.stack([np.concatenate(p) for p in per_set]), np.concatenate(labels)


class SimilarityEvaluator:
    """Cost of removal sets = how much the final representation changes, on calibration clips.

    The front state of every calibration batch and the unpruned encoder output are computed once;
    a call evaluates a list of removal sets with prefix resumption (one trie walk per batch).
    ``metric="cosine"``: mean over utterances of 1 - cos between the flattened (frames x dims)
    encoder outputs of the pruned and the unpruned model (padded frames zeroed);
    ``metric="mse"``: mean squared difference over valid frames. Use calibration clips, not the
    test split. Pass it as ``evaluator`` to
    :func:`~workflow_scripts.pruning.strategies.removal_sets` with ``"similarity_greedy"``.
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


def similarity_evaluator(model, clips, device, settings: Mapping) -> SimilarityEvaluator:
    """The ``similarity_greedy`` strategy's evaluator on calibration ``clips`` (its
    ``batch_size`` and ``metric`` settings)."""
    return SimilarityEvaluator(model, clips, device, settings["batch_size"], settings["metric"])


def sweep(
    model,
    audio,
    labels: np.ndarray | None,
    strategy: str,
    removal_sets: Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
    batch_size: int = 128,
) -> list[dict]:
    """One row per removal set: accuracy with bootstrap CI, relative accuracy, size
    (:func:`sweep_with_predictions` without the predictions)."""
    return sweep_with_predictions(model, audio, labels, strategy, removal_sets, device,
                                  batch_size)[0]  # fmt: skip


def sweep_with_predictions(
    model,
    audio,
    labels: np.ndarray | None,
    strategy: str,
    removal_sets: Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
    batch_size: int = 128,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(one row per removal set, predicted classes (1 + S, N) - row 0 the unpruned model, row
    k + 1 removal set k -, labels (N,)).

    ``audio``: the test clips, a :class:`~workflow_scripts.backbones.clips.ClipSet`
    (``labels`` None; read ``batch_size`` clips at a time) or float32 clips (N, samples) in
    memory with their ``labels``. Accuracy comes from :func:`sweep_predictions` (prefix
    resumption; identical to predicting with the physically pruned model); the empty set
    reproduces the unpruned ``predict`` exactly. ``relative_accuracy`` = accuracy / accuracy
    of the unpruned model (NaN when that is 0), with its paired bootstrap interval over clips
    ``retained_lo`` / ``retained_hi`` (:func:`~workflow_scripts.core.retained.retained_intervals`).
    Parameter counts are of the physically pruned model (:func:`remove_layers`). Latency:
    :func:`removal_latency`.
    """
    device = torch.device(device)
    clips = as_clips(audio, labels)
    sets = [sorted(int(i) for i in s) for s in removal_sets]
    pred, labels = sweep_predictions(model, clips.batches(batch_size), [[], *sets], device)
    C = model.config.num_labels
    base_acc = prediction_report(pred[0], labels, C)["accuracy"]
    ok = pred == labels[None]
    cis = retained_intervals(list(ok[1:]), ok[0])
    L = n_layers(model)
    rows = []
    for k, s in enumerate(sets):
        rep = prediction_report(pred[k + 1], labels, C)
        pruned = remove_layers(model, s)
        rows.append({
            "strategy": strategy,
            "n_removed": len(s),
            "removed": s,
            "layers_remaining": L - len(s),
            "fraction_removed": len(s) / L,
            "accuracy": rep["accuracy"],
            "ci_lo": rep["ci_lo"],
            "ci_hi": rep["ci_hi"],
            "n_utterances": rep["n"],
            "eval_clips": rep["n"],
            "per_class_accuracy": rep["per_class_accuracy"],
            "relative_accuracy": rep["accuracy"] / base_acc if base_acc > 0 else math.nan,
            "retained_lo": cis[k][1],
            "retained_hi": cis[k][2],
            "transformer_params": transformer_parameters(pruned),
            "total_params": count_parameters(pruned),
        })  # fmt: skip
        del pruned
    return rows, pred, labels


#: The latency columns of a pruning row (:func:`removal_latency`).
LATENCY_COLUMNS = ("latency_ms", "base_latency_ms", "latency_min_ms", "base_latency_min_ms",
                   "speedup", "speedup_lo", "speedup_hi", "latency_batch_size",
                   "timing_precision", "timing_device", "timing_clock",
                   "latency_threads")  # fmt: skip


def no_latency(device) -> dict:
    """The latency columns of a row that was not timed (NaN, no precision)."""
    nan = dict.fromkeys(LATENCY_COLUMNS, math.nan)
    return {**nan, "latency_batch_size": 0, "timing_precision": None,
            "timing_device": str(device), "timing_clock": None,
            "latency_threads": torch.get_num_threads()}  # fmt: skip


def removal_latency(
    model,
    removal_sets: Sequence[Sequence[int]],
    audio: np.ndarray,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> list[dict]:
    """Per removal set, the :data:`LATENCY_COLUMNS`: the physically pruned model
    (:func:`remove_layers`) timed against the unpruned ``model`` interleaved in this process
    (:func:`~workflow_scripts.core.timing.compare_latency`: ``warmup`` untimed rounds, then
    ``repeats`` rounds of one forward pass of each, fp32) on one batch of clips ``audio``
    (float32 (b, samples), normalised per utterance here). ``base_latency_ms`` is the
    unpruned model's median in the same interleaved run; a set listed twice (the empty set
    of every random seed) is timed once. One pruned copy exists at a time."""
    device = torch.device(device)
    model.eval()
    x = normalize_audio(torch.from_numpy(np.asarray(audio, dtype=np.float32))).to(device)
    done: dict[tuple, dict] = {}
    for s in removal_sets:
        key = tuple(sorted(int(i) for i in s))
        if key in done:
            continue
        pruned = remove_layers(model, key).to(device).eval()
        t = compare_latency(lambda: model(x), lambda p=pruned: p(x), device, warmup, repeats)
        done[key] = {**{k: t[k] for k in LATENCY_COLUMNS[:7]},
                     "latency_batch_size": int(x.shape[0]), "timing_precision": t["precision"],
                     "timing_device": t["device"], "timing_clock": t["clock"],
                     "latency_threads": t["threads"]}  # fmt: skip
        del pruned
    return [dict(done[tuple(sorted(int(i) for i in s))]) for s in removal_sets]
