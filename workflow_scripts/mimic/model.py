"""The mimicker and the model around it: mimic layers, :class:`Mimicker`, the fine-tuned
model's head (:class:`ClassifierHead`) and :class:`MimickedModel` (audio -> conv front end ->
feature projection -> mimicker -> head), plus the teacher states a mimicker learns.

Layer types
-----------
* linear: ``Linear(D, h) -> LayerNorm(h) -> ReLU -> Linear(h, D)``, ``h`` = ``width`` = 64.
* transformer: a standard post-norm ``torch.nn.TransformerEncoderLayer`` at width ``D``
  (``batch_first=True``, ReLU), ``heads`` = 8 by default and a feed-forward width ``ffn``
  that defaults to ``width`` (the authors' public code sets both from one hidden-size option).

Positional information (``positions``, either kind): the mimicker reads the feature projection,
which comes *before* the backbone's positional convolution, so a transformer mimicker without
positions sees a bag of frames. ``"none"`` (the paper's mimicker) adds nothing; ``"sinusoidal"``
adds the fixed table of Vaswani et al. (no parameters); ``"conv"`` adds
``GELU(depthwise Conv1d(x))`` over frames (the backbone's positional convolution with one filter
per channel: ``D * (conv_kernel + 1)`` parameters, counted in the mimicker's), applied once
before the first layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from workflow_scripts.backbones.registry import encoder_of

# a Mimicker's layer kinds ("identity" = depth 0; the grid's kinds are plan.KINDS + no_mimic)
MIMICKER_KINDS = ("linear", "transformer", "identity")
# what a mimicker adds to its input before the first layer (module docstring)
POSITIONS = ("none", "sinusoidal", "conv")
DEFAULT_MIMIC = {
    "kind": "linear",
    "depth": 2,
    "width": 64,
    "heads": 8,
    "ffn": None,
    "dropout": 0.1,
    "positions": "none",
    "conv_kernel": 16,
}


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


class SinusoidalPositions(nn.Module):
    """``x + PE`` with the fixed sinusoidal table of Vaswani et al. (2017):
    ``PE[t, 2i] = sin(t / 10000^(2i/D))``, ``PE[t, 2i+1] = cos(t / 10000^(2i/D))``; no
    parameters, any number of frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + sinusoidal_table(x.shape[1], x.shape[2], x.device).to(x.dtype)


def sinusoidal_table(frames: int, dim: int, device=None) -> torch.Tensor:
    """The ``(frames, dim)`` sinusoidal position table (float32)."""
    pos = torch.arange(frames, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                    * (-math.log(10000.0) / dim))  # fmt: skip
    pe = torch.zeros(frames, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


class ConvPositions(nn.Module):
    """``x + GELU(Conv1d(x))`` over frames with a depthwise (``groups = D``) convolution of
    ``kernel`` taps, padded to keep the number of frames (an even kernel drops the last output
    frame, as wav2vec2's positional convolution): ``D * (kernel + 1)`` parameters."""

    def __init__(self, dim: int, kernel: int = 16):
        super().__init__()
        if kernel < 1:
            raise ValueError(f"conv_kernel must be positive, got {kernel}")
        self.kernel = int(kernel)
        self.conv = nn.Conv1d(dim, dim, self.kernel, padding=self.kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.kernel % 2 == 0:
            y = y[..., :-1]
        return x + F.gelu(y).transpose(1, 2)


def position_module(positions: str, dim: int, conv_kernel: int = 16) -> nn.Module | None:
    """The module that adds positional information (None for ``"none"``)."""
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; allowed: {list(POSITIONS)}")
    if positions == "sinusoidal":
        return SinusoidalPositions()
    if positions == "conv":
        return ConvPositions(dim, conv_kernel)
    return None


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
    positions: ``"none"``, ``"sinusoidal"`` or ``"conv"`` (module docstring), added to the
             input before the first layer (``pos``; built after the layers, so the layers'
             initial weights do not depend on it).
    conv_kernel: taps of the ``"conv"`` positions' depthwise convolution.
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
        positions: str = "none",
        conv_kernel: int = 16,
    ):
        super().__init__()
        if kind not in MIMICKER_KINDS:
            raise ValueError(f"unknown mimicker kind {kind!r}; allowed: {list(MIMICKER_KINDS)}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        if kind == "identity" and depth != 0:
            raise ValueError("kind 'identity' requires depth 0")
        if depth == 0 and positions != "none":
            raise ValueError("a depth-0 mimicker (the identity) has no positions")
        self.spec = {
            "kind": "identity" if depth == 0 else kind,
            "depth": int(depth),
            "dim": int(dim),
            "width": int(width),
            "heads": heads,
            "ffn": ffn,
            "dropout": float(dropout),
            "positions": positions,
            "conv_kernel": int(conv_kernel),
        }
        layers: list[nn.Module] = []
        for _ in range(depth):
            if kind == "linear":
                layers.append(LinearMimicLayer(dim, width))
            else:
                layers.append(TransformerMimicLayer(dim, heads, ffn or width, dropout))
        self.layers = nn.ModuleList(layers)
        self.pos = position_module(positions, dim, conv_kernel)

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
        return cls(s["kind"], s["depth"], dim, s["width"], s["heads"], s["ffn"], s["dropout"],
                   s["positions"], s["conv_kernel"])  # fmt: skip

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
        if self.pos is not None:
            x = self.pos(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


def no_mimic(dim: int) -> Mimicker:
    """The ``no_mimic`` baseline: an identity mimicker (the head reads the feature projection)."""
    return Mimicker("identity", 0, dim)


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

    Hidden-state indices as in :func:`workflow_scripts.mimic.targets.choose_targets`; index
    ``n_layers`` is the encoder's ``last_hidden_state`` (what the classification head reads).
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


# --------------------------------------------------------------------------------------------
# export: a mimicked model as a folder of its own
# --------------------------------------------------------------------------------------------
#: The weights file of an exported mimicked model (not ``model.safetensors``, so a plain
#: ``from_pretrained`` on the folder fails loudly instead of loading a random transformer stack).
MIMICKED_WEIGHTS = "mimicked_model.safetensors"


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def save_mimicked(mm: MimickedModel, folder, extra: dict | None = None) -> None:
    """Save ``mm`` to ``folder`` (replaced): every weight (conv front end, feature projection,
    mimicker, head) in :data:`MIMICKED_WEIGHTS` (safetensors), the backbone's config with the
    mimicker's spec under ``mimicker`` in ``config.json``, the audio preparation in
    ``preprocessor_config.json`` and ``extra`` (e.g. the cell's row) in ``export.json``.
    :func:`load_mimicked` rebuilds it."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from workflow_scripts.core.files import apply_umask
    from workflow_scripts.pruning.export import save_feature_extractor

    out = Path(folder)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in mm.state_dict().items()}
    save_file(state, str(out / MIMICKED_WEIGHTS))
    cfg = copy.deepcopy(mm.config)
    cfg.mimicker = dict(mm.mimicker.spec)
    cfg.to_json_file(str(out / "config.json"))
    save_feature_extractor(out)
    (out / "export.json").write_text(json.dumps(extra or {}, indent=1, default=_jsonable))
    apply_umask(out)


def load_mimicked(folder, device: torch.device | str = "cpu") -> MimickedModel:
    """The mimicked model saved by :func:`save_mimicked`, in eval mode on ``device``: a module
    mapping 16-kHz audio (B, samples), normalised to zero mean and unit variance per utterance
    (``backbones.registry.normalize_audio``, or the folder's ``AutoFeatureExtractor``), to an
    output with ``.logits`` (B, classes)::

        from workflow_scripts.mimic.model import load_mimicked
        mm = load_mimicked("results/exports/mimic/hubert-small/transformer-1")
        logits = mm(input_values).logits

    The front end is built from ``config.json`` without the transformer stack (which the
    mimicker replaces), then every weight is loaded (strict)."""
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForAudioClassification

    folder = Path(folder)
    cfg = AutoConfig.from_pretrained(str(folder))
    spec = dict(cfg.mimicker)
    layers = cfg.num_hidden_layers
    cfg.num_hidden_layers = 0  # the stack is replaced: do not build (or initialise) it
    base = AutoModelForAudioClassification.from_config(cfg)
    cfg.num_hidden_layers = layers
    mm = MimickedModel(base, Mimicker.from_spec(spec))
    mm.load_state_dict(load_file(str(folder / MIMICKED_WEIGHTS)), strict=True)
    return mm.to(device).eval()
