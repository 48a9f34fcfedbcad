"""Structured pruning of the transformer stack with hard-concrete L0 gates and distillation.

Wang et al. (Interspeech 2023, "Task-agnostic structured pruning of speech representation
models") and DPHuBERT (Peng et al. 2023) / CoFi (Xia et al. 2022): learnable gates with
hard-concrete distributions (Louizos et al. 2018) on

* attention heads (``heads``),
* the dimensions within each head (``head_dims``; Wang et al.'s fine-grained option: unit
  (h, i) is row i of head h in the query and value projections, with its key row and its
  out-projection column),
* FFN intermediate units (``ffn_units``),
* optionally whole sublayers (``layers``: one gate on the attention branch and one on the FFN
  branch of every block, as CoFi's z_MHA / z_FFN; both closed = the block is an identity in the
  stable-layer-norm variant, only its layer norms remain in the post-LN one).

Training is task-agnostic: the gated student (a copy of the fine-tuned model's encoder blocks)
reads the cached input of block 0 and is distilled to the cached teacher states of chosen
layers (L1 or MSE plus a negative-cosine term), with a Lagrangian
``lambda1 (s - t) + lambda2 (s - t)^2`` on the expected sparsity ``s`` (lambdas by gradient
ascent, target ``t`` warmed up linearly). Afterwards the gates are made deterministic
(DPHuBERT: per gate vector the round(expected number of zeros) smallest gates are 0, the others
keep a soft value), folded into the weights and the blocks physically shrunk
(:meth:`StructuredLayer.fold`); the pruned blocks replace ``encoder.layers`` of the classifier.

Sparsity
    Fraction of the *prunable* transformer-stack parameters removed: the attention projections
    (q, k, v, out: weights and biases) and the FFN (intermediate and output dense: weights and
    biases) of every encoder block. Layer norms, WavLM's relative-position table and gating
    parameters, the positional convolution, the front end and the head are not counted.
    With gate keep-probabilities p (L0 = P(z != 0)) the expected kept count of a block is
    ``p_mha (sum_h p_h sum_i p_hi (4D + 3) + D) + p_ffn (sum_j p_j (2D + 1) + D)``, which is
    the exact parameter count of the physically pruned block for 0/1 gates.

The blocks are re-implemented (:class:`StructuredLayer`, same computation as the transformers
5.x ``Wav2Vec2``/``Hubert``/``WavLM`` ``EncoderLayer`` and ``...StableLayerNorm``; a test checks
equality) because transformers has no head-pruning utility for these models, head dimensions
may differ per head after pruning, and WavLM's gated relative position bias is computed per
*original* head from the block input. Attention masks: None, a 4-D additive/boolean mask
(wav2vec2/HuBERT) or the (B, T) frame mask (WavLM); clips of fixed length need none.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workflow_scripts.backbones.registry import count_parameters, encoder_of

GATE_KINDS = ("layers", "heads", "head_dims", "ffn_units")


# ----------------------------------------------------------------------------------------
# Hard-concrete gates
# ----------------------------------------------------------------------------------------
class HardConcrete(nn.Module):
    """``n`` hard-concrete gates (Louizos et al. 2018): s = sigmoid((log u - log(1-u) +
    log_alpha) / beta), stretched to (l, r) and clamped to [0, 1].

    ``l0()`` = sum_j P(z_j != 0) = sum_j sigmoid(log_alpha_j - beta log(-l / r)) (closed form).
    ``straight_through``: the clamp passes gradients as if it were the identity (Wang et al.),
    so gates stuck at exactly 0 or 1 still receive a gradient.
    """

    def __init__(self, n: int, init_log_alpha: float = 3.0, init_std: float = 0.01,
                 beta: float = 2 / 3, stretch: float = 0.1,
                 straight_through: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.n = int(n)
        self.beta = float(beta)
        self.l, self.r = -float(stretch), 1.0 + float(stretch)
        self.straight_through = bool(straight_through)
        self.log_alpha = nn.Parameter(torch.empty(self.n))
        with torch.no_grad():
            self.log_alpha.normal_(init_log_alpha, init_std)
        self.bias = -self.beta * math.log(-self.l / self.r)

    def keep_prob(self) -> torch.Tensor:
        """P(z_j != 0) per gate (differentiable)."""
        return torch.sigmoid(self.log_alpha + self.bias)

    def l0(self) -> torch.Tensor:
        """Expected number of non-zero gates."""
        return self.keep_prob().sum()

    def sample(self, eps: float = 1e-6) -> torch.Tensor:
        """One reparameterised sample z in [0, 1]^n."""
        u = torch.empty_like(self.log_alpha).uniform_(eps, 1 - eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        s = s * (self.r - self.l) + self.l
        z = s.clamp(0.0, 1.0)
        if self.straight_through:
            z = s + (z - s).detach()
        return z

    @torch.no_grad()
    def deterministic(self, rows: int = 1) -> torch.Tensor:
        """Test-time gates (DPHuBERT): round(n - l0) gates with the smallest log_alpha are 0,
        the others sigmoid(0.8 log_alpha / beta). With ``rows`` > 1 the gates are ``rows``
        equal groups (the dimensions of each head) rounded group by group."""
        z = torch.sigmoid(self.log_alpha / self.beta * 0.8).clone()
        la, p = self.log_alpha.view(rows, -1), self.keep_prob().view(rows, -1)
        zr = z.view(rows, -1)
        for r in range(rows):
            n_zero = int(round(la.shape[1] - float(p[r].sum())))
            if n_zero > 0:
                zr[r, torch.topk(la[r], n_zero, largest=False).indices] = 0.0
        return z

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()


# ----------------------------------------------------------------------------------------
# One encoder block with explicit structure
# ----------------------------------------------------------------------------------------
def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    dtype=weight.dtype, device=weight.device)  # fmt: skip
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def arch_of(model_or_config) -> str:
    cfg = getattr(model_or_config, "config", model_or_config)
    return getattr(cfg, "model_type", "wav2vec2")


class StructuredLayer(nn.Module):
    """A wav2vec2 / HuBERT / WavLM encoder block whose attention heads (with per-head kept
    dimensions), FFN units and sublayers are explicit, so it can be gated and shrunk.

    ``heads``: kept original head indices; ``dims[k]``: kept dimension indices of kept head k;
    ``units``: number of FFN units; ``mha`` / ``ffn``: whether the attention / FFN branch
    exists. Call signature and return value as the transformers block it replaces (WavLM:
    ``(hidden, position_bias)``), so it drops into ``encoder.layers``.
    """

    def __init__(self, hf_layer: nn.Module, arch: str, stable: bool) -> None:
        super().__init__()
        att = hf_layer.attention
        self.arch, self.stable, self.wavlm = arch, bool(stable), arch == "wavlm"
        self.hidden = att.embed_dim
        self.orig_heads = att.num_heads
        self.orig_head_dim = att.head_dim
        self.scaling = att.head_dim**-0.5
        self.heads = list(range(att.num_heads))
        self.dims = [list(range(att.head_dim)) for _ in self.heads]
        self.mha = True
        self.ffn = True
        self.q_proj = copy.deepcopy(att.q_proj)
        self.k_proj = copy.deepcopy(att.k_proj)
        self.v_proj = copy.deepcopy(att.v_proj)
        self.out_proj = copy.deepcopy(att.out_proj)
        self.layer_norm = copy.deepcopy(hf_layer.layer_norm)
        self.final_layer_norm = copy.deepcopy(hf_layer.final_layer_norm)
        ff = hf_layer.feed_forward
        self.intermediate_dense = copy.deepcopy(ff.intermediate_dense)
        self.output_dense = copy.deepcopy(ff.output_dense)
        self.act = ff.intermediate_act_fn
        if self.wavlm:
            self.gru_rel_pos_linear = copy.deepcopy(att.gru_rel_pos_linear)
            self.gru_rel_pos_const = nn.Parameter(att.gru_rel_pos_const.detach().clone())
            self.num_buckets, self.max_distance = att.num_buckets, att.max_distance
            if hasattr(att, "rel_attn_embed"):
                self.rel_attn_embed = copy.deepcopy(att.rel_attn_embed)
        if getattr(hf_layer, "adapter_layer", None) is not None:
            raise ValueError("blocks with attention adapters are not supported")

    # -- structure --------------------------------------------------------------------------
    def structure(self) -> dict:
        return {"heads": list(self.heads), "dims": [list(d) for d in self.dims],
                "units": int(self.intermediate_dense.out_features) if self.ffn else 0,
                "mha": self.mha, "ffn": self.ffn}  # fmt: skip

    def prunable_parameters(self) -> int:
        """Parameters of the attention projections and the FFN (the sparsity's base)."""
        n = 0
        if self.mha:
            n += sum(count_parameters(m) for m in (self.q_proj, self.k_proj, self.v_proj,
                                                   self.out_proj))  # fmt: skip
        if self.ffn:
            n += count_parameters(self.intermediate_dense) + count_parameters(self.output_dense)
        return n

    def _rows(self) -> list[int]:
        """Row indices into the current q/k/v projections of every kept (head, dim)."""
        rows, start = [], 0
        for d in self.dims:
            rows.append(list(range(start, start + len(d))))
            start += len(d)
        return rows

    @torch.no_grad()
    def fold(self, masks: dict | None = None) -> StructuredLayer:
        """A physically pruned copy: gates (deterministic values; zeros = removed) folded into
        the weights, so its output equals the masked forward of this block."""
        new = copy.copy(self)  # shallow: modules replaced below
        new._modules = dict(self._modules)
        new._parameters = dict(self._parameters)
        m = _full_masks(self, masks)
        mha = float(m["mha"])
        rows_all = self._rows()
        heads, dims, sel_rows, q_scale, out_scale = [], [], [], [], []
        for k, h in enumerate(self.heads):
            if mha == 0 or float(m["head"][k]) == 0:
                continue
            keep = [i for i in range(len(self.dims[k])) if float(m["dim"][k][i]) != 0]
            if not keep:
                continue
            heads.append(h)
            dims.append([self.dims[k][i] for i in keep])
            sel_rows += [rows_all[k][i] for i in keep]
            q_scale += [float(m["dim"][k][i]) for i in keep]
            out_scale += [float(m["head"][k]) * mha] * len(keep)
        new.heads, new.dims, new.mha = heads, dims, mha != 0
        if new.mha:
            idx = torch.tensor(sel_rows, dtype=torch.long, device=self.q_proj.weight.device)
            qs = torch.tensor(q_scale, dtype=self.q_proj.weight.dtype, device=idx.device)
            os_ = torch.tensor(out_scale, dtype=qs.dtype, device=idx.device)

            def rows(lin, scale=None):
                w, b = lin.weight[idx], None if lin.bias is None else lin.bias[idx]
                if scale is not None:
                    w = w * scale[:, None]
                    b = None if b is None else b * scale
                return _linear(w, b)

            new.q_proj = rows(self.q_proj, qs)
            new.k_proj = rows(self.k_proj)
            new.v_proj = rows(self.v_proj, qs)
            w = self.out_proj.weight[:, idx] * os_[None, :]
            b = None if self.out_proj.bias is None else self.out_proj.bias * mha
            new.out_proj = _linear(w, b)
            if self.wavlm:
                pos = [self.heads.index(h) for h in heads]
                new.gru_rel_pos_const = nn.Parameter(self.gru_rel_pos_const[:, pos].clone())
        else:
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                new._modules.pop(name, None)
                setattr(new, name, None)
            if self.wavlm:
                new._parameters.pop("gru_rel_pos_const", None)
                new.gru_rel_pos_const = None
        ffn = float(m["ffn"])
        units = m["unit"]
        keep_u = [j for j in range(len(units)) if float(units[j]) != 0] if ffn != 0 else []
        new.ffn = ffn != 0
        if new.ffn:
            idx = torch.tensor(keep_u, dtype=torch.long, device=self.output_dense.weight.device)
            us = torch.as_tensor(units, dtype=self.output_dense.weight.dtype,
                                 device=idx.device)[idx] * ffn  # fmt: skip
            new.intermediate_dense = _linear(self.intermediate_dense.weight[idx],
                                             self.intermediate_dense.bias[idx])  # fmt: skip
            new.output_dense = _linear(self.output_dense.weight[:, idx] * us[None, :],
                                       self.output_dense.bias * ffn)  # fmt: skip
        else:
            for name in ("intermediate_dense", "output_dense"):
                new._modules.pop(name, None)
                setattr(new, name, None)
        return new

    @torch.no_grad()
    def shrink_to(self, structure: dict) -> StructuredLayer:
        """A copy with the shapes of ``structure`` (values copied from the kept rows; used to
        rebuild a saved pruned model before loading its weights)."""
        ones = _full_masks(self, None)
        heads = set(structure["heads"]) if structure["mha"] else set()
        ones["mha"] = torch.tensor(1.0 if structure["mha"] else 0.0)
        ones["head"] = torch.tensor([1.0 if h in heads else 0.0 for h in self.heads])
        dims = dict(zip(structure["heads"], structure["dims"], strict=True))
        ones["dim"] = torch.tensor(
            [[1.0 if d in dims.get(h, []) else 0.0 for d in self.dims[k]]
             for k, h in enumerate(self.heads)]
        )  # fmt: skip
        ones["ffn"] = torch.tensor(1.0 if structure["ffn"] else 0.0)
        n = self.intermediate_dense.out_features
        ones["unit"] = torch.tensor([1.0 if j < structure["units"] else 0.0 for j in range(n)])
        return self.fold(ones)

    # -- forward ----------------------------------------------------------------------------
    def compute_bias(self, t: int) -> torch.Tensor:
        """WavLM relative position bias (orig_heads, T, T) from this block's table."""
        dev = self.rel_attn_embed.weight.device
        pos = torch.arange(t, dtype=torch.long, device=dev)
        rel = pos[None, :] - pos[:, None]
        buckets = _relative_positions_bucket(rel, self.num_buckets, self.max_distance)
        return self.rel_attn_embed(buckets).permute(2, 0, 1)

    def _attention(self, x, attention_mask, position_bias, m):
        B, T, D = x.shape
        if not self.heads:
            out = self.out_proj.bias.expand(B, T, D)
            return out if m["mha"] is None else out * m["mha"]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        lens = [len(d) for d in self.dims]
        uniform = len(set(lens)) == 1
        bias = None
        if self.wavlm:
            chunks = x.reshape(B, T, self.orig_heads, -1)[:, :, self.heads].permute(0, 2, 1, 3)
            proj = self.gru_rel_pos_linear(chunks).view(B, len(self.heads), T, 2, 4).sum(-1)
            gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
            const = self.gru_rel_pos_const[0]  # (h, 1, 1)
            gate = gate_a * (gate_b * const[None] - 1.0) + 2.0  # (B, h, T, 1)
            bias = gate * position_bias[self.heads][None]  # (B, h, T, T)
        mask = None
        if attention_mask is not None:
            if self.wavlm:  # (B, T) frame mask: 1 = valid
                mask = torch.zeros(B, 1, 1, T, dtype=x.dtype, device=x.device)
                mask = mask.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
            elif attention_mask.dtype == torch.bool:
                mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
                mask = mask.masked_fill(~attention_mask, float("-inf"))
            else:
                mask = attention_mask.to(x.dtype)
        dim_mask = m["dim"]
        head_mask = m["head"]

        def attend(qh, kh, vh, bh):  # (B, [h,] T, d)
            s = torch.matmul(qh, kh.transpose(-1, -2)) * self.scaling
            if bh is not None:
                s = s + bh
            if mask is not None:
                s = s + (mask if s.dim() == 4 else mask[:, 0])
            return torch.matmul(torch.softmax(s, dim=-1), vh)

        if uniform:
            d = lens[0]
            shape = (B, T, len(self.heads), d)
            qh, kh, vh = (t.view(shape).transpose(1, 2) for t in (q, k, v))
            if dim_mask is not None:
                qh = qh * dim_mask[None, :, None, :]
                vh = vh * dim_mask[None, :, None, :]
            ctx = attend(qh, kh, vh, bias)  # (B, h, T, d)
            if head_mask is not None:
                ctx = ctx * head_mask[None, :, None, None]
            ctx = ctx.transpose(1, 2).reshape(B, T, -1)
        else:  # differing kept dims per head: one head at a time
            outs, start = [], 0
            for j, d in enumerate(lens):
                sl = slice(start, start + d)
                start += d
                qh, kh, vh = q[..., sl], k[..., sl], v[..., sl]
                if dim_mask is not None:
                    qh, vh = qh * dim_mask[j][:d], vh * dim_mask[j][:d]
                c = attend(qh, kh, vh, None if bias is None else bias[:, j])
                outs.append(c if head_mask is None else c * head_mask[j])
            ctx = torch.cat(outs, dim=-1)
        out = self.out_proj(ctx)
        return out if m["mha"] is None else out * m["mha"]

    def _ffn(self, x, m):
        if self.intermediate_dense.out_features == 0:
            out = self.output_dense.bias.expand_as(x)
        else:
            a = self.act(self.intermediate_dense(x))
            if m["unit"] is not None:
                a = a * m["unit"]
            out = self.output_dense(a)
        return out if m["ffn"] is None else out * m["ffn"]

    def forward(self, hidden_states, attention_mask=None, position_bias=None, masks=None,
                **_kwargs):  # fmt: skip
        m = {"mha": None, "head": None, "dim": None, "ffn": None, "unit": None, **(masks or {})}
        x = hidden_states
        if self.wavlm and position_bias is None:
            if not hasattr(self, "rel_attn_embed"):
                raise RuntimeError("WavLM: the first block must own the position table")
            position_bias = self.compute_bias(x.shape[1])
        if self.stable:
            if self.mha:
                x = x + self._attention(self.layer_norm(x), attention_mask, position_bias, m)
            if self.ffn:
                x = x + self._ffn(self.final_layer_norm(x), m)
        else:
            if self.mha:
                x = x + self._attention(x, attention_mask, position_bias, m)
            x = self.layer_norm(x)
            if self.ffn:
                x = x + self._ffn(x, m)
            x = self.final_layer_norm(x)
        return (x, position_bias) if self.wavlm else x


def _relative_positions_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int):
    """WavLM's bucketing of relative positions (as transformers' WavLMAttention)."""
    num_buckets = num_buckets // 2
    buckets = (rel > 0).to(torch.long) * num_buckets
    rel = torch.abs(rel)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + large * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rel, large)


def _full_masks(layer: StructuredLayer, masks: dict | None) -> dict:
    """Masks with every entry present (ones where ``masks`` has none)."""
    m = dict(masks or {})
    dev = (layer.layer_norm.weight.device, layer.layer_norm.weight.dtype)
    one = torch.ones((), device=dev[0], dtype=dev[1])
    n_units = layer.intermediate_dense.out_features if layer.ffn else 0
    d = len(layer.dims[0]) if layer.dims else 0
    out = {
        "mha": m.get("mha") if m.get("mha") is not None else one,
        "head": m.get("head") if m.get("head") is not None else one.expand(len(layer.heads)),
        "dim": m.get("dim") if m.get("dim") is not None else one.expand(len(layer.heads), d),
        "ffn": m.get("ffn") if m.get("ffn") is not None else one,
        "unit": m.get("unit") if m.get("unit") is not None else one.expand(n_units),
    }
    if masks and masks.get("dim") is None and len({len(x) for x in layer.dims}) > 1:
        out["dim"] = [one.expand(len(x)) for x in layer.dims]
    return out


# ----------------------------------------------------------------------------------------
# The stack: structured layers, gates, expected sparsity
# ----------------------------------------------------------------------------------------
def structured_layers(model) -> list[StructuredLayer]:
    """StructuredLayer copies of every block of ``model`` (a transformers classifier or base
    model), or the blocks themselves when they already are StructuredLayers."""
    base = encoder_of(model)
    stable = bool(getattr(base.config, "do_stable_layer_norm", False))
    arch = arch_of(base)
    return [
        lay if isinstance(lay, StructuredLayer) else StructuredLayer(lay, arch, stable)
        for lay in base.encoder.layers
    ]


def prunable_parameters(model) -> int:
    """Attention-projection and FFN parameters of every block (the sparsity's base)."""
    return sum(lay.prunable_parameters() for lay in structured_layers(model))


def install_layers(model, layers: list[StructuredLayer]):
    """``model`` with ``encoder.layers`` replaced by ``layers`` (in place; returned)."""
    encoder_of(model).encoder.layers = nn.ModuleList(layers)
    return model


class GatedStack(nn.Module):
    """The student: StructuredLayers with hard-concrete gates, run from the state entering
    block 0 (the cache's hidden state 0). Its state i is block i's raw output, as the cache's
    (transformers 5.x ``output_hidden_states``: in the stable-layer-norm variant the last state
    is also taken before the encoder's final layer norm; a test checks both variants)."""

    def __init__(self, layers: list[StructuredLayer], gates: dict | None = None,
                 init_log_alpha: float = 3.0, straight_through: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.layers = nn.ModuleList(layers)
        gates = {k: False for k in GATE_KINDS} | dict(gates or {})
        bad = set(gates) - set(GATE_KINDS)
        if bad:
            raise ValueError(f"unknown gate kinds {sorted(bad)}; allowed: {list(GATE_KINDS)}")
        self.kinds = {k for k, on in gates.items() if on}

        def hc(n):
            return HardConcrete(n, init_log_alpha, straight_through=straight_through)

        self.gates = nn.ModuleList()
        for lay in layers:
            g = nn.ModuleDict()
            if "layers" in self.kinds:
                g["mha"], g["ffn"] = hc(1), hc(1)
            if "heads" in self.kinds:
                g["head"] = hc(len(lay.heads))
            if "head_dims" in self.kinds:
                g["dim"] = hc(sum(len(d) for d in lay.dims))
            if "ffn_units" in self.kinds:
                g["unit"] = hc(lay.intermediate_dense.out_features)
            self.gates.append(g)

    @classmethod
    def from_model(cls, model, **kwargs) -> GatedStack:
        return cls([copy.deepcopy(lay) for lay in structured_layers(model)], **kwargs)

    def gate_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.gates for p in g.parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.gate_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def masks(self, mode: str = "sample") -> list[dict]:
        """Per block the gate values: ``sample`` (training), ``deterministic`` (after
        training) or ``ones`` (no gating)."""
        out = []
        for lay, g in zip(self.layers, self.gates, strict=True):
            m = {}
            for key, gate in g.items():
                if mode == "ones":
                    continue
                if mode == "sample":
                    z = gate.sample()
                else:
                    z = gate.deterministic(len(lay.heads) if key == "dim" else 1)
                if key in ("mha", "ffn"):
                    z = z[0]
                elif key == "dim":
                    z = z.view(len(lay.heads), -1)
                m[key] = z
            out.append(m)
        return out

    def forward(self, h0: torch.Tensor, layers: list[int] | None = None,
                mode: str = "sample") -> dict[int, torch.Tensor]:  # fmt: skip
        """Hidden states at the indices ``layers`` (0..L; default all) from the block-0 input
        ``h0`` (B, T, D)."""
        L = len(self.layers)
        wanted = set(range(L + 1) if layers is None else layers)
        masks = self.masks(mode)
        out = {0: h0} if 0 in wanted else {}
        h, pb = h0, None
        for i, (lay, m) in enumerate(zip(self.layers, masks, strict=True)):
            if lay.wavlm:
                h, pb = lay(h, position_bias=pb, masks=m)
            else:
                h = lay(h, masks=m)
            if i + 1 in wanted:
                out[i + 1] = h
        return out

    # -- sparsity ---------------------------------------------------------------------------
    def total_prunable(self) -> int:
        return sum(lay.prunable_parameters() for lay in self.layers)

    def expected_kept(self) -> torch.Tensor:
        """Expected prunable parameters kept (differentiable; see the module docstring)."""
        total = 0.0
        for lay, g in zip(self.layers, self.gates, strict=True):
            D = lay.hidden
            dev = lay.layer_norm.weight
            one = torch.ones((), device=dev.device, dtype=torch.float32)
            p_mha = g["mha"].keep_prob()[0] if "mha" in g else one
            p_ffn = g["ffn"].keep_prob()[0] if "ffn" in g else one
            H, d = len(lay.heads), len(lay.dims[0]) if lay.dims else 0
            p_head = g["head"].keep_prob() if "head" in g else one.expand(H)
            p_dim = g["dim"].keep_prob().view(H, d) if "dim" in g else one.expand(H, d)
            per_unit = 4 * D + 3 if lay.q_proj.bias is not None else 4 * D
            attn = (p_head * p_dim.sum(1)).sum() * per_unit + (D if lay.out_proj.bias is not None
                                                              else 0)  # fmt: skip
            F_ = lay.intermediate_dense.out_features
            p_unit = g["unit"].keep_prob() if "unit" in g else one.expand(F_)
            ffn = p_unit.sum() * (2 * D + 1) + D
            total = total + p_mha * attn + p_ffn * ffn
        return total

    def expected_sparsity(self) -> torch.Tensor:
        return 1.0 - self.expected_kept() / self.total_prunable()

    @torch.no_grad()
    def pruned_layers(self) -> list[StructuredLayer]:
        """Deterministic gates folded into physically smaller blocks."""
        return [lay.fold(m) for lay, m in zip(self.layers, self.masks("deterministic"),
                                              strict=True)]  # fmt: skip


# ----------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------
def distill_loss(student: dict[int, torch.Tensor], teacher: dict[int, torch.Tensor],
                 kind: str = "l1", cos_weight: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Sum over layers of L1 (or MSE) minus ``cos_weight`` x mean cosine similarity over
    frames (DPHuBERT: L1 + (-cos))."""
    loss = 0.0
    for i, t in teacher.items():
        s = student[i]
        rec = F.l1_loss(s, t) if kind == "l1" else F.mse_loss(s, t)
        cos = F.cosine_similarity(s, t, dim=-1).mean()
        loss = loss + rec - cos_weight * cos
    return loss


def lagrangian(expected: torch.Tensor, target: float, lambda1: torch.Tensor,
               lambda2: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """lambda1 (s - t) + lambda2 (s - t)^2 (CoFi / DPHuBERT)."""
    diff = expected - target
    return lambda1 * diff + lambda2 * diff * diff


def target_at(step: int, total: int, target: float, warmup_frac: float) -> float:
    """The sparsity target at ``step``: linear from 0 to ``target`` over ``warmup_frac`` of
    the steps, then constant."""
    warm = max(1, int(round(total * warmup_frac)))
    return float(target) * min(1.0, (step + 1) / warm)


def default_distill_layers(n_layers: int) -> list[int]:
    """Hidden-state indices distilled by default: about L/3, 2L/3 and L (DPHuBERT: 4, 8, 12)."""
    return sorted({max(1, round(n_layers / 3)), max(1, round(2 * n_layers / 3)), n_layers})


def train_gates(stack: GatedStack, x0: np.ndarray, targets: dict[int, np.ndarray],
                target_sparsity: float, steps: int = 300, batch_size: int = 16,
                lr: float = 2e-4, gate_lr: float = 0.05, lambda_lr: float = 0.05,
                warmup_frac: float = 0.3, loss: str = "l1", cos_weight: float = 1.0,
                seed: int = 0, device="cpu", log=None,
                progress: bool = False) -> list[dict]:  # fmt: skip
    """Distil the gated ``stack`` to the cached teacher states and drive its expected sparsity
    to ``target_sparsity``. ``x0`` (N, T, D): the input of block 0; ``targets``: hidden-state
    index -> (N, T, D) teacher states. Weights (AdamW, ``lr``), gate log-alphas (Adam,
    ``gate_lr``) descend; lambda1, lambda2 ascend (their gradients are negated). Returns the
    per-step history (loss terms, expected sparsity, target, lambdas)."""
    from tqdm import tqdm

    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    stack.to(device).train()
    lambdas = torch.zeros(2, device=device, requires_grad=True)
    opt_w = torch.optim.AdamW(stack.weight_parameters(), lr=lr, weight_decay=0.0)
    opt_g = torch.optim.Adam(stack.gate_parameters(), lr=gate_lr)
    opt_l = torch.optim.Adam([lambdas], lr=lambda_lr)
    layers = sorted(targets)
    N = len(x0)
    bs = min(batch_size, N)
    history = []
    for step in tqdm(range(steps), desc="structured", disable=not progress, mininterval=10):
        idx = np.sort(rng.choice(N, size=bs, replace=False))
        x = torch.as_tensor(np.asarray(x0[idx]), dtype=torch.float32, device=device)
        teach = {i: torch.as_tensor(np.asarray(targets[i][idx]), dtype=torch.float32,
                                    device=device) for i in layers}  # fmt: skip
        out = stack(x, layers=layers, mode="sample")
        dl = distill_loss(out, teach, loss, cos_weight)
        t = target_at(step, steps, target_sparsity, warmup_frac)
        s = stack.expected_sparsity()
        reg = lagrangian(s, t, lambdas[0], lambdas[1])
        total = dl + reg
        for o in (opt_w, opt_g, opt_l):
            o.zero_grad(set_to_none=True)
        total.backward()
        if lambdas.grad is not None:
            lambdas.grad.neg_()  # gradient ascent on the multipliers
        for o in (opt_w, opt_g, opt_l):
            o.step()
        rec = {"step": step, "loss": total.item(), "distill": dl.item(), "reg": reg.item(),
               "expected_sparsity": s.item(), "target": t, "lambda1": lambdas[0].item(),
               "lambda2": lambdas[1].item()}  # fmt: skip
        history.append(rec)
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in rec.items()))  # fmt: skip
    stack.eval()
    return history


# ----------------------------------------------------------------------------------------
# The pruned model: build, report, save, load
# ----------------------------------------------------------------------------------------
def pruned_model(model, layers: list[StructuredLayer]):
    """A deep copy of the classifier ``model`` whose blocks are ``layers`` (the head, front
    end and positional convolution unchanged). ``config.structured_pruning`` records the
    structure."""
    new = copy.deepcopy(model)
    install_layers(new, [copy.deepcopy(lay) for lay in layers])
    new.config.structured_pruning = [lay.structure() for lay in layers]
    return new


def structure_report(layers: list[StructuredLayer], total_prunable: int) -> dict:
    """Kept heads / head dimensions / FFN units per block and the achieved sparsity."""
    kept = sum(lay.prunable_parameters() for lay in layers)
    return {
        "kept_heads": [len(lay.heads) if lay.mha else 0 for lay in layers],
        "kept_head_dims": [sum(len(d) for d in lay.dims) if lay.mha else 0 for lay in layers],
        "kept_ffn_units": [lay.intermediate_dense.out_features if lay.ffn else 0 for lay in layers],
        "mha_kept": [bool(lay.mha) for lay in layers],
        "ffn_kept": [bool(lay.ffn) for lay in layers],
        "prunable_params": int(total_prunable),
        "prunable_params_kept": int(kept),
        "achieved_sparsity": 1.0 - kept / total_prunable if total_prunable else math.nan,
    }


def save_pruned(model, out_dir: str | os.PathLike, extra: dict | None = None) -> None:
    """Weights (safetensors), the per-block structure and the config of a pruned model;
    :func:`load_pruned` rebuilds it from the unpruned checkpoint's architecture."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    layers = encoder_of(model).encoder.layers
    info = {"structure": [lay.structure() for lay in layers], **(extra or {})}
    (out / "structure.json").write_text(json.dumps(info, indent=1))
    model.config.to_json_file(str(out / "config.json"))


def load_pruned(out_dir: str | os.PathLike, base_model_dir: str | os.PathLike):
    """The pruned classifier saved by :func:`save_pruned`; ``base_model_dir`` is the unpruned
    fine-tuned model (its architecture is shrunk to the saved structure)."""
    from safetensors.torch import load_file

    from workflow_scripts.backbones.registry import load_classifier

    out = Path(out_dir)
    info = json.loads((out / "structure.json").read_text())
    model = load_classifier(str(base_model_dir))
    layers = [lay.shrink_to(s) for lay, s in zip(structured_layers(model), info["structure"],
                                                 strict=True)]  # fmt: skip
    install_layers(model, layers)
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------
# One grid cell
# ----------------------------------------------------------------------------------------
def run_cell(model, cell: dict, x0: np.ndarray, teacher: dict[int, np.ndarray],
             test_audio: np.ndarray, test_labels: np.ndarray, device="cpu",
             train_data=None, out_dir: str | os.PathLike | None = None,
             log=None) -> tuple[dict, list[dict]]:  # fmt: skip
    """One structured-pruning cell: train the gates of a copy of ``model``'s blocks on the
    cached states (``x0`` = hidden state 0, ``teacher`` = index -> teacher states of the
    distilled layers), make them deterministic, shrink the blocks, evaluate the pruned
    classifier (the fine-tuned head) end to end on the test clips against the unpruned one on
    the same clips, time both (``timing.measure_latency``), optionally fine-tune briefly
    (``cell["finetune"]["steps"]`` > 0, on ``train_data()`` = training clips) and save the
    pruned model to ``out_dir``. Returns (row, per-step training history)."""
    import time

    from workflow_scripts.backbones.finetune import (
        accuracy_report,
        autocast,
        predict,
        train_classifier,
    )
    from workflow_scripts.core.timing import measure_latency
    from workflow_scripts.pruning.core import transformer_parameters

    log = log or (lambda _m: None)
    device = torch.device(device)
    model = model.to(device).eval()
    C = model.config.num_labels
    stack = GatedStack.from_model(model, gates=cell["gates"],
                                  init_log_alpha=cell["init_log_alpha"],
                                  straight_through=cell["straight_through"])  # fmt: skip
    t0 = time.perf_counter()
    history = train_gates(
        stack, x0, teacher, cell["target"], steps=cell["steps"], batch_size=cell["batch_size"],
        lr=cell["lr"], gate_lr=cell["gate_lr"], lambda_lr=cell["lambda_lr"],
        warmup_frac=cell["warmup_frac"], loss=cell["distill"]["loss"],
        cos_weight=cell["distill"]["cos_weight"], seed=cell["seed"], device=device, log=log,
        progress=True,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t0
    layers = stack.pruned_layers()
    rep = structure_report(layers, stack.total_prunable())
    log(f"achieved sparsity {rep['achieved_sparsity']:.4f}, kept heads {rep['kept_heads']}")
    pruned = pruned_model(model, layers).to(device).eval()
    bs = cell["eval_batch_size"]
    base = accuracy_report(predict(model, test_audio, device, bs), test_labels, C)
    acc = accuracy_report(predict(pruned, test_audio, device, bs), test_labels, C)
    lat = cell["latency"]
    x_lat = torch.from_numpy(test_audio[: lat["batch_size"]]).to(device)

    def timed(m):
        def fn():
            with autocast(device):
                return m(x_lat)

        return measure_latency(fn, device, lat["warmup"], lat["repeats"])["median_ms"]

    base_ms, ms = timed(model), timed(pruned)
    ft_acc = math.nan
    ft = cell.get("finetune") or {"steps": 0}
    if ft.get("steps", 0) > 0:
        if train_data is None:
            raise ValueError("the short fine-tune is on but no training data was given")
        from workflow_scripts.backbones.finetune import resolve_finetune

        x_tr, y_tr = train_data()
        tuned = copy.deepcopy(pruned)
        spec = resolve_finetune({k: v for k, v in ft.items() if k != "train_clips"}, None)
        train_classifier(tuned, x_tr, y_tr, spec, device, log=log, progress=True)
        ft_logits = predict(tuned, test_audio, device, bs)
        ft_acc = accuracy_report(ft_logits, test_labels, C)["accuracy"]
        del tuned
    last = history[-1] if history else {}
    row = {
        "target_sparsity": float(cell["target"]),
        "achieved_sparsity": rep["achieved_sparsity"],
        "expected_sparsity": float(stack.expected_sparsity().detach()),
        "prunable_params": rep["prunable_params"],
        "prunable_params_kept": rep["prunable_params_kept"],
        "transformer_params": transformer_parameters(pruned),
        "base_transformer_params": transformer_parameters(model),
        "total_params": count_parameters(pruned),
        "base_total_params": count_parameters(model),
        "accuracy": acc["accuracy"],
        "ci_lo": acc["ci_lo"],
        "ci_hi": acc["ci_hi"],
        "n_utterances": acc["n"],
        "per_class_accuracy": acc["per_class_accuracy"],
        "base_accuracy": base["accuracy"],
        "retained": acc["accuracy"] / base["accuracy"] if base["accuracy"] > 0 else math.nan,
        "finetuned_accuracy": ft_acc,
        "finetuned_retained": ft_acc / base["accuracy"] if base["accuracy"] > 0 else math.nan,
        "finetune_steps": int(ft.get("steps", 0)),
        "latency_ms": ms,
        "base_latency_ms": base_ms,
        "speedup": base_ms / ms if ms > 0 else math.nan,
        "latency_batch_size": int(x_lat.shape[0]),
        "latency_device": str(device),
        "latency_threads": torch.get_num_threads(),
        "kept_heads": rep["kept_heads"],
        "kept_head_dims": rep["kept_head_dims"],
        "kept_ffn_units": rep["kept_ffn_units"],
        "mha_kept": rep["mha_kept"],
        "ffn_kept": rep["ffn_kept"],
        "gates": ",".join(k for k in GATE_KINDS if cell["gates"].get(k)),
        "straight_through": bool(cell["straight_through"]),
        "distill_layers": sorted(int(i) for i in teacher),
        "steps": int(cell["steps"]),
        "train_seconds": train_seconds,
        "final_distill_loss": last.get("distill", math.nan),
        "lambda1": last.get("lambda1", math.nan),
        "lambda2": last.get("lambda2", math.nan),
        "n_train_clips": int(len(x0)),
    }
    if out_dir is not None:
        save_pruned(pruned, out_dir, {"row": {k: v for k, v in row.items()
                                              if k != "per_class_accuracy"}})  # fmt: skip
    return row, history


__all__ = [
    "GATE_KINDS",
    "GatedStack",
    "HardConcrete",
    "StructuredLayer",
    "default_distill_layers",
    "distill_loss",
    "install_layers",
    "lagrangian",
    "load_pruned",
    "prunable_parameters",
    "run_cell",
    "pruned_model",
    "save_pruned",
    "structure_report",
    "structured_layers",
    "target_at",
    "train_gates",
]
