"""Mimicking networks: replace a speech model's whole transformer stack by one or two small layers.

Method (Dorszewski et al., ICASSP 2025, section 2.3; see ``shared/papers/NOTES.md``)
-----------------------------------------------------------------------------------
A *mimicker* reads the feature-projection output ``(B, T, D)`` (what the transformer stack
receives) and predicts teacher hidden states: with ``depth`` 2, the output of its first layer
predicts an intermediate teacher layer (one per similarity block) and the output of its second
layer predicts the last teacher layer; with ``depth`` 1 the single output predicts the last
layer. ``depth`` 0 is the identity (the ``no_mimic`` baseline: the head reads the feature
projection directly).

* Stage 1 (:func:`train_stage1`): sum over targets of the MSE to cached teacher states, Adam,
  the state with the lowest validation loss is kept. No backbone forward pass: inputs and
  targets come from a cache (numpy, memmap or torch; float16 is cast per batch).
* Stage 2 (:func:`train_stage2`): cross-entropy (NLL) of the fine-tuned model's own head
  (projector, mean over frames, classifier; :class:`ClassifierHead`) on the mimicker's last
  output; the mimicker is frozen by default, the head trainable by default.
* Inference (:class:`MimickedModel`): audio, conv front end, feature projection, mimicker,
  head. :func:`cost_report` compares parameters and latency with the original model.

Layer indices
-------------
Targets use *hidden-state indices*, the convention of :mod:`workflow_scripts.similarity` and of
``output_hidden_states``: index 0 is the input of the first transformer block, index ``i``
(1..L) the output of block ``i``; the last layer is ``L`` = ``n_layers``. :func:`teacher_states`
returns exactly these (index ``L`` is the encoder's ``last_hidden_state``, i.e. what the head
reads; for stable-layer-norm (large) models it includes the final LayerNorm).

Layer types
-----------
* linear: ``Linear(D, h) -> LayerNorm(h) -> ReLU -> Linear(h, D)``, ``h`` = ``width`` = 64.
* transformer: a standard post-norm ``torch.nn.TransformerEncoderLayer`` at width ``D``
  (``batch_first=True``, ReLU), ``heads`` = 8 by default and a feed-forward width ``ffn``
  that defaults to ``width`` (the authors' public code sets both from one hidden-size option).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workflow_scripts.backbones.finetune import autocast
from workflow_scripts.backbones.registry import count_parameters, encoder_of
from workflow_scripts.core.timing import measure_latency

KINDS = ("linear", "transformer", "identity")
DEFAULT_MIMIC = {
    "kind": "linear",
    "depth": 2,
    "width": 64,
    "heads": 8,
    "ffn": None,
    "dropout": 0.1,
}


# --------------------------------------------------------------------------------------------
# layers and the mimicker
# --------------------------------------------------------------------------------------------
class LinearMimicLayer(nn.Module):
    """``Linear(D, h) -> LayerNorm(h) -> ReLU -> Linear(h, D)`` applied frame by frame."""

    def __init__(self, dim: int, width: int = 64):
        super().__init__()
        if dim < 1 or width < 1:
            raise ValueError(f"dim and width must be positive, got dim={dim}, width={width}")
        self.down = nn.Linear(dim, width)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.norm(self.down(x))))


def resolve_heads(dim: int, heads: int | None = 8) -> int:
    """Attention heads for a transformer mimic layer of width ``dim``.

    ``None`` picks ``gcd(dim, 8)`` (always a divisor of ``dim``); an explicit number must
    divide ``dim``, else a ``ValueError`` names the valid choices up to 16.
    """
    if heads is None:
        return math.gcd(dim, 8)
    if heads < 1 or dim % heads:
        divisors = [h for h in range(1, min(dim, 16) + 1) if dim % h == 0]
        raise ValueError(
            f"transformer mimic layer: hidden size {dim} is not divisible by heads={heads}; "
            f"use one of {divisors} (or heads=None for gcd({dim}, 8) = {math.gcd(dim, 8)})"
        )
    return int(heads)


class TransformerMimicLayer(nn.TransformerEncoderLayer):
    """A standard ``nn.TransformerEncoderLayer(d_model=dim, nhead=heads,
    dim_feedforward=ffn, batch_first=True)`` (post-norm, ReLU) with validated ``heads``."""

    def __init__(self, dim: int, heads: int | None = 8, ffn: int = 64, dropout: float = 0.1):
        if ffn < 1:
            raise ValueError(f"ffn must be positive, got {ffn}")
        super().__init__(
            d_model=dim,
            nhead=resolve_heads(dim, heads),
            dim_feedforward=ffn,
            dropout=dropout,
            batch_first=True,
        )


class Mimicker(nn.Module):
    """A stack of ``depth`` mimic layers; ``forward(x)`` returns one ``(B, T, D)`` prediction
    per layer (``depth`` 0: ``[x]``, the identity), the last one predicting the last teacher
    layer.

    kind:    "linear", "transformer", or "identity" (only with depth 0; any kind with depth
             0 is the identity).
    depth:   number of mimic layers (the paper uses 1 or 2; 0 = no mimicker).
    dim:     hidden size D of the backbone.
    width:   hidden width h of a linear layer; the transformer feed-forward width when ``ffn``
             is None.
    heads:   attention heads of a transformer layer (must divide D; None = gcd(D, 8)).
    ffn:     feed-forward width of a transformer layer (None = ``width``).
    dropout: dropout inside transformer layers (active in train mode only).
    """

    def __init__(
        self,
        kind: str = "linear",
        depth: int = 1,
        dim: int = 768,
        width: int = 64,
        heads: int | None = 8,
        ffn: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown mimicker kind {kind!r}; allowed: {list(KINDS)}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        if kind == "identity" and depth != 0:
            raise ValueError("kind 'identity' requires depth 0")
        self.spec = {
            "kind": "identity" if depth == 0 else kind,
            "depth": int(depth),
            "dim": int(dim),
            "width": int(width),
            "heads": heads,
            "ffn": ffn,
            "dropout": float(dropout),
        }
        layers: list[nn.Module] = []
        for _ in range(depth):
            if kind == "linear":
                layers.append(LinearMimicLayer(dim, width))
            else:
                layers.append(TransformerMimicLayer(dim, heads, ffn or width, dropout))
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_spec(cls, spec: dict, dim: int | None = None) -> Mimicker:
        """Build from a config dict (keys of ``DEFAULT_MIMIC``; ``dim`` overrides spec['dim'])."""
        s = {**DEFAULT_MIMIC, **spec}
        unknown = set(s) - set(DEFAULT_MIMIC) - {"dim"}
        if unknown:
            raise ValueError(f"unknown mimicker option(s): {sorted(unknown)}")
        if dim is None:
            if "dim" not in s:
                raise ValueError("mimicker spec has no 'dim' and none was given")
            dim = s["dim"]
        kind = s["kind"]
        return cls(kind, s["depth"], dim, s["width"], s["heads"], s["ffn"], s["dropout"])

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def n_outputs(self) -> int:
        """How many predictions ``forward`` returns (= how many targets stage 1 needs)."""
        return max(1, len(self.layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.layers:
            return [x]
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


def no_mimic(dim: int) -> Mimicker:
    """The ``no_mimic`` baseline: an identity mimicker (the head reads the feature projection)."""
    return Mimicker("identity", 0, dim)


# --------------------------------------------------------------------------------------------
# target layers
# --------------------------------------------------------------------------------------------
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
    * depth >= 2 without ``blocks``: evenly spaced, ``round(k * n_layers / depth)`` for
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
        return [int(round(k * n_layers / depth)) for k in range(1, depth)] + [n_layers]
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


# --------------------------------------------------------------------------------------------
# front end, teacher states, head
# --------------------------------------------------------------------------------------------
def feature_projection(model, input_values: torch.Tensor) -> torch.Tensor:
    """Feature-projection output ``(B, T, D)`` of a wav2vec2/HuBERT/WavLM model (the input of
    its transformer stack, before positional convolution; no SpecAugment masking)."""
    base = encoder_of(model)
    feats = base.feature_extractor(input_values).transpose(1, 2)
    out = base.feature_projection(feats)
    return out[0] if isinstance(out, tuple) else out


@torch.inference_mode()
def teacher_states(
    model, input_values: torch.Tensor, layers: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(feature projection, [hidden state at each index in ``layers``]) for one audio batch.

    Hidden-state indices as in :func:`choose_targets`; index ``n_layers`` is the encoder's
    ``last_hidden_state`` (what the classification head reads).
    """
    base = encoder_of(model)
    n_layers = len(base.encoder.layers)
    bad = [i for i in layers if not 0 <= i <= n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range 0..{n_layers}")
    hs: dict[int, torch.Tensor] = {}

    def first_input(_mod, args, kwargs):
        hs[0] = args[0] if args else kwargs["hidden_states"]

    def block_output(i):
        def hook(_mod, _args, out):
            hs[i] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [base.encoder.layers[0].register_forward_pre_hook(first_input, with_kwargs=True)]
    handles += [
        layer.register_forward_hook(block_output(i + 1))
        for i, layer in enumerate(base.encoder.layers)
    ]
    try:
        proj = feature_projection(model, input_values)
        hs[n_layers] = base.encoder(proj).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    return proj, [hs[i] for i in layers]


class ClassifierHead(nn.Module):
    """The fine-tuned model's head: ``projector`` -> mean over frames -> ``classifier``."""

    def __init__(self, projector: nn.Module, classifier: nn.Module):
        super().__init__()
        self.projector = projector
        self.classifier = classifier

    @classmethod
    def from_model(cls, model) -> ClassifierHead:
        """Copies (not shares) ``model.projector`` and ``model.classifier`` of an
        ``AutoModelForAudioClassification`` model."""
        if not (hasattr(model, "projector") and hasattr(model, "classifier")):
            raise ValueError("model has no projector/classifier (not a sequence classifier)")
        if getattr(model.config, "use_weighted_layer_sum", False):
            raise ValueError("heads with use_weighted_layer_sum read every layer; not supported")
        return cls(copy.deepcopy(model.projector), copy.deepcopy(model.classifier))

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None = None):
        """Logits ``(B, classes)`` from hidden states ``(B, T, D)``; ``frame_mask`` (B, T)
        restricts the mean to valid frames."""
        h = self.projector(hidden)
        if frame_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = frame_mask.to(h.dtype).unsqueeze(-1)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.classifier(pooled)


class MimickedModel(nn.Module):
    """Audio -> conv front end -> feature projection -> mimicker -> head.

    Shares the front-end modules with ``model`` (the transformer stack is not a submodule, so
    ``parameters()`` counts only what inference uses). ``forward(input_values)`` returns an
    object with ``.logits`` like the original model, so ``finetune.predict`` works on it.
    Fixed-length (padded) clips are assumed: no attention mask.
    """

    def __init__(self, model, mimicker: Mimicker, head: ClassifierHead | None = None):
        super().__init__()
        base = encoder_of(model)
        self.feature_extractor = base.feature_extractor
        self.feature_projection = base.feature_projection
        self.mimicker = mimicker
        self.head = head if head is not None else ClassifierHead.from_model(model)
        self.config = model.config

    def features(self, input_values: torch.Tensor) -> torch.Tensor:
        out = self.feature_projection(self.feature_extractor(input_values).transpose(1, 2))
        return out[0] if isinstance(out, tuple) else out

    def forward(self, input_values: torch.Tensor):
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.mimicker(self.features(input_values))[-1]
        return SequenceClassifierOutput(logits=self.head(hidden))


def replaced_stack_parameters(model) -> int:
    """Parameters of the transformer stack a mimicker replaces: the whole ``encoder`` module
    (positional convolution, its LayerNorm and every block)."""
    return count_parameters(encoder_of(model).encoder)


def reduction_pct(original: float, reduced: float) -> float:
    """``100 * (1 - reduced / original)``."""
    return 100.0 * (1.0 - reduced / original) if original else float("nan")


def parameter_summary(model, mimicker: Mimicker, head: ClassifierHead | None = None) -> dict:
    """Parameter counts of the replaced stack, the mimicker, the whole model and the
    mimicked model, with reductions in %."""
    stack = replaced_stack_parameters(model)
    mim = count_parameters(mimicker)
    whole = count_parameters(model)
    mimicked = count_parameters(MimickedModel(model, mimicker, head))
    return {
        "stack_params": stack,
        "mimicker_params": mim,
        "model_params": whole,
        "mimicked_model_params": mimicked,
        "stack_param_reduction_pct": reduction_pct(stack, mim),
        "model_param_reduction_pct": reduction_pct(whole, mimicked),
    }


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _as_index(idx, n: int, name: str) -> np.ndarray:
    a = np.asarray(idx)
    if a.dtype == bool:
        if a.shape != (n,):
            raise ValueError(f"{name}: boolean mask of shape {a.shape}, expected ({n},)")
        a = np.flatnonzero(a)
    a = a.astype(np.int64).ravel()
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name}: indices out of range 0..{n - 1}")
    return a


def _take(arr, idx: np.ndarray, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Rows ``idx`` (sorted) of a numpy/memmap/torch array as a ``dtype`` tensor on ``device``."""
    if isinstance(arr, torch.Tensor):
        t = arr[torch.from_numpy(idx).to(arr.device)]
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr[idx]))
    return t.to(device=device, dtype=dtype, non_blocking=True)


def _batches(idx: np.ndarray, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(idx) if rng is not None else idx
    for s in range(0, len(order), batch_size):
        yield np.sort(order[s : s + batch_size])


def _snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@contextmanager
def _frozen(module: nn.Module, frozen: bool):
    """Temporarily turn off ``requires_grad`` of ``module`` when ``frozen``."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    if frozen:
        for p, _ in saved:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


def _check_inputs(inputs, arrays: Sequence, names: Sequence[str]) -> int:
    n = len(inputs)
    for a, name in zip(arrays, names, strict=True):
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} rows, inputs {n}")
    return n


@torch.no_grad()
def stage1_loss(
    mimicker: Mimicker,
    inputs,
    targets: Sequence,
    idx,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> tuple[float, list[float]]:
    """(sum over targets, per-target) mean squared error over the rows ``idx`` (eval mode)."""
    device = torch.device(device)
    idx = _as_index(idx, len(inputs), "idx")
    mimicker.eval()
    sse = [0.0] * len(targets)
    count = 0
    for b in _batches(idx, batch_size, None):
        with autocast(device):
            preds = mimicker(_take(inputs, b, device))
        for k, (p, t) in enumerate(zip(preds, targets, strict=True)):
            sse[k] += float(F.mse_loss(p.float(), _take(t, b, device), reduction="sum"))
        count += preds[0].numel()
    per = [s / max(count, 1) for s in sse]
    return float(sum(per)), per


def train_stage1(
    mimicker: Mimicker,
    inputs,
    targets: Sequence,
    train_idx,
    val_idx,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    log: Callable[[str], object] = print,
    seed: int = 0,
) -> dict:
    """Stage 1: fit ``mimicker`` to cached teacher states by MSE; keep the best validation state.

    inputs:    (N, T, D) feature-projection outputs (numpy, memmap or torch; any float dtype,
               cast to float32 per batch on ``device``).
    targets:   one (N, T, D) array per mimicker output (``mimicker.n_outputs``), in order
               (intermediate first, last layer last); see :func:`choose_targets`.
    train_idx, val_idx: row indices (or boolean masks) of the training/validation utterances;
               ``val_idx`` must not be empty.
    Loss: sum over targets of the mean squared error; Adam(lr); shuffled batches (``seed``).
    After every epoch the validation loss is computed; the parameters of the epoch with the
    lowest one are loaded into ``mimicker`` at the end (ties: the earlier epoch).

    Returns {"history": [{"epoch", "train_loss", "val_loss", "val_loss_per_target"}, ...],
    "best_epoch" (1-based), "best_val_loss", "seconds"}.
    """
    device = torch.device(device)
    targets = list(targets)
    if len(targets) != mimicker.n_outputs:
        raise ValueError(
            f"mimicker has {mimicker.n_outputs} output(s) but {len(targets)} target array(s)"
        )
    n = _check_inputs(inputs, targets, [f"targets[{k}]" for k in range(len(targets))])
    for k, t in enumerate(targets):
        if tuple(t.shape[1:]) != tuple(inputs.shape[1:]):
            raise ValueError(f"targets[{k}] has shape {tuple(t.shape)}, inputs {inputs.shape}")
    tr = _as_index(train_idx, n, "train_idx")
    va = _as_index(val_idx, n, "val_idx")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError("train_idx and val_idx must both be non-empty")
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    params = [p for p in mimicker.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the mimicker has no trainable parameters (depth 0?)")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mimicker.to(device)
    opt = torch.optim.Adam(params, lr=lr)
    history: list[dict] = []
    best = (math.inf, 0, _snapshot(mimicker))
    t0 = time.time()
    for epoch in range(1, epochs + 1):
        mimicker.train()
        total, seen = 0.0, 0
        for b in _batches(tr, batch_size, rng):
            x = _take(inputs, b, device)
            with autocast(device):
                preds = mimicker(x)
            loss = sum(
                F.mse_loss(p.float(), _take(t, b, device))
                for p, t in zip(preds, targets, strict=True)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
        val, per = stage1_loss(mimicker, inputs, targets, va, batch_size, device)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / seen,
                "val_loss": val,
                "val_loss_per_target": per,
            }
        )
        if val < best[0]:
            best = (val, epoch, _snapshot(mimicker))
        log(f"stage 1 epoch {epoch}/{epochs}: train {total / seen:.5f}  val {val:.5f}")
    mimicker.load_state_dict(best[2])
    mimicker.eval()
    return {
        "history": history,
        "best_epoch": best[1],
        "best_val_loss": best[0],
        "seconds": time.time() - t0,
    }


@torch.no_grad()
def mimic_logits(
    mimicker: Mimicker,
    head: ClassifierHead,
    inputs,
    idx,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits (len(idx), classes) of head(mimicker(inputs[idx])[-1]) in eval mode, rows in the
    order of ``idx``. Feed to ``finetune.accuracy_report``."""
    device = torch.device(device)
    idx = _as_index(idx, len(inputs), "idx")
    mimicker.eval()
    head.eval()
    out = []
    for s in range(0, len(idx), batch_size):
        b = idx[s : s + batch_size]
        order = np.argsort(b, kind="stable")
        with autocast(device):
            logits = head(mimicker(_take(inputs, b[order], device))[-1]).float().cpu()
        inv = torch.empty_like(torch.from_numpy(order))
        inv[torch.from_numpy(order)] = torch.arange(len(order))
        out.append(logits[inv])
    if not out:
        return np.zeros((0, head.classifier.out_features), dtype=np.float32)
    return torch.cat(out).numpy()


def train_stage2(
    mimicker: Mimicker,
    head: ClassifierHead,
    inputs,
    labels,
    train_idx,
    val_idx,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    freeze_mimicker: bool = True,
    freeze_head: bool = False,
    log: Callable[[str], object] = print,
    seed: int = 0,
) -> dict:
    """Stage 2: cross-entropy of ``head(mimicker(x)[-1])`` against ``labels``.

    inputs: (N, T, D) cached feature-projection outputs; labels: (N,) class indices.
    ``freeze_mimicker`` (default True): the mimicker is not updated and runs in eval mode (its
    weights stay bit-identical); ``freeze_head`` (default False) likewise for the head. At least
    one of them must have trainable parameters. Adam(lr). The same code trains the ``no_mimic``
    baseline (a depth-0 :func:`no_mimic` mimicker: only the head learns).
    After every epoch the validation loss and accuracy are computed; the epoch with the highest
    accuracy (ties: lower loss, then earlier) is restored into both modules at the end.

    Returns {"history": [{"epoch", "train_loss", "val_loss", "val_accuracy"}, ...],
    "best_epoch", "best_val_accuracy", "seconds"}.
    """
    device = torch.device(device)
    labels_np = np.asarray(labels).astype(np.int64)
    n = _check_inputs(inputs, [labels_np], ["labels"])
    tr = _as_index(train_idx, n, "train_idx")
    va = _as_index(val_idx, n, "val_idx")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError("train_idx and val_idx must both be non-empty")
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    y_all = torch.from_numpy(labels_np)
    train_mim = not freeze_mimicker and any(p.requires_grad for p in mimicker.parameters())
    train_head = not freeze_head and any(p.requires_grad for p in head.parameters())
    params = []
    if train_mim:
        params += [p for p in mimicker.parameters() if p.requires_grad]
    if train_head:
        params += [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: mimicker and head are both frozen or parameter-free")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mimicker.to(device)
    head.to(device)
    opt = torch.optim.Adam(params, lr=lr)
    history: list[dict] = []
    best_key, best_epoch, best_state = None, 0, None
    t0 = time.time()
    with _frozen(mimicker, not train_mim), _frozen(head, not train_head):
        for epoch in range(1, epochs + 1):
            mimicker.train(train_mim)
            head.train(train_head)
            total, seen = 0.0, 0
            for b in _batches(tr, batch_size, rng):
                x = _take(inputs, b, device)
                y = y_all[torch.from_numpy(b)].to(device)
                with autocast(device):
                    if train_mim:
                        hidden = mimicker(x)[-1]
                    else:
                        with torch.no_grad():
                            hidden = mimicker(x)[-1]
                    logits = head(hidden)
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                seen += len(b)
            logits = torch.from_numpy(mimic_logits(mimicker, head, inputs, va, batch_size, device))
            yv = y_all[torch.from_numpy(va)]
            val_loss = float(F.cross_entropy(logits, yv))
            val_acc = float((logits.argmax(1) == yv).double().mean())
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": total / seen,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                }
            )
            key = (val_acc, -val_loss)
            if best_key is None or key > best_key:
                best_key, best_epoch = key, epoch
                best_state = (_snapshot(mimicker), _snapshot(head))
            log(
                f"stage 2 epoch {epoch}/{epochs}: train {total / seen:.4f}  "
                f"val loss {val_loss:.4f}  val acc {val_acc:.4f}"
            )
    mimicker.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    mimicker.eval()
    head.eval()
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val_accuracy": best_key[0],
        "seconds": time.time() - t0,
    }


# --------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------
def cost_report(
    model,
    mimicker: Mimicker,
    batch: torch.Tensor,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    head: ClassifierHead | None = None,
    amp: bool = False,
    reference: dict | None = None,
) -> dict:
    """Parameters and median latency (``timing.measure_latency``) of the original vs the
    mimicked model.

    batch: raw audio (B, samples), already normalised. ``model`` and ``mimicker`` are moved to
    ``device`` and put in eval mode. Timed (each in its own ``measure_latency`` call):
    (a) the transformer stack (``encoder``) alone and the mimicker alone, on the same
    feature-projection output of ``batch``; (b) the whole model and the :class:`MimickedModel`
    on ``batch``. ``amp``: bf16 autocast on CUDA. ``reference``: an earlier report of the same
    model/batch whose stack and whole-model timings are reused (to time several mimickers).

    Returns :func:`parameter_summary` plus ``stack_ms``, ``mimicker_ms``, ``model_ms``,
    ``mimicked_model_ms`` (medians per batch), per-sample versions (``*_ms_per_sample``),
    ``stack_latency_reduction_pct``, ``model_latency_reduction_pct``, ``batch_size``,
    ``frames``, ``device``, ``warmup``, ``repeats``.
    """
    from contextlib import nullcontext

    device = torch.device(device)
    model.to(device).eval()
    mimicker.to(device).eval()
    mm = MimickedModel(model, mimicker, head).to(device).eval()
    x = batch.to(device)
    ctx = (lambda: autocast(device)) if amp else nullcontext
    with torch.inference_mode(), ctx():
        feats = feature_projection(model, x)
    stack = encoder_of(model).encoder

    def timed(fn):
        def call():
            with ctx():
                return fn()

        return measure_latency(call, device, warmup, repeats)["median_ms"]

    if reference is not None:
        stack_ms, model_ms = reference["stack_ms"], reference["model_ms"]
    else:
        stack_ms = timed(lambda: stack(feats))
        model_ms = timed(lambda: model(x))
    mim_ms = timed(lambda: mimicker(feats))
    mm_ms = timed(lambda: mm(x))
    bsz = x.shape[0]
    report = parameter_summary(model, mimicker, mm.head)
    report.update(
        {
            "stack_ms": stack_ms,
            "mimicker_ms": mim_ms,
            "model_ms": model_ms,
            "mimicked_model_ms": mm_ms,
            "stack_ms_per_sample": stack_ms / bsz,
            "mimicker_ms_per_sample": mim_ms / bsz,
            "model_ms_per_sample": model_ms / bsz,
            "mimicked_model_ms_per_sample": mm_ms / bsz,
            "stack_latency_reduction_pct": reduction_pct(stack_ms, mim_ms),
            "model_latency_reduction_pct": reduction_pct(model_ms, mm_ms),
            "batch_size": int(bsz),
            "frames": int(feats.shape[1]),
            "device": str(device),
            "warmup": warmup,
            "repeats": repeats,
        }
    )
    return report
