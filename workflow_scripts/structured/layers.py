"""One encoder block with explicit structure: :class:`StructuredLayer`.

The blocks are re-implemented (same computation as the transformers 5.x ``Wav2Vec2``/``Hubert``/
``WavLM`` ``EncoderLayer`` and ``...StableLayerNorm``; a test checks equality) because
transformers has no head-pruning utility for these models, head dimensions may differ per head
after pruning, and WavLM's gated relative position bias is computed per *original* head from
the block input. Attention masks: None, a 4-D additive/boolean mask (wav2vec2/HuBERT) or the
(B, T) frame mask (WavLM); clips of fixed length need none.

Gate values enter the forward pass as ``masks`` (``mha``, ``head``, ``dim``, ``ffn``,
``unit``; None = no gate); physical shrinking is in :mod:`workflow_scripts.structured.shrink`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from workflow_scripts.backbones.registry import count_parameters, encoder_of
from workflow_scripts.structured.shrink import fold_layer, shrink_layer


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

    def fold(self, masks: dict | None = None) -> StructuredLayer:
        """A physically pruned copy: gates (deterministic values; zeros = removed) folded into
        the weights, so its output equals the masked forward of this block
        (:func:`~workflow_scripts.structured.shrink.fold_layer`)."""
        return fold_layer(self, masks)

    def shrink_to(self, structure: dict) -> StructuredLayer:
        """A copy with the shapes of ``structure`` (values copied from the kept rows; used to
        rebuild a saved pruned model before loading its weights)."""
        return shrink_layer(self, structure)

    # -- forward ----------------------------------------------------------------------------
    def compute_bias(self, t: int) -> torch.Tensor:
        """WavLM relative position bias (orig_heads, T, T) from this block's table."""
        dev = self.rel_attn_embed.weight.device
        pos = torch.arange(t, dtype=torch.long, device=dev)
        rel = pos[None, :] - pos[:, None]
        buckets = _relative_positions_bucket(rel, self.num_buckets, self.max_distance)
        return self.rel_attn_embed(buckets).permute(2, 0, 1)

    def _wavlm_bias(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """WavLM's gated relative position bias (B, h, T, T) of the kept heads, each gated from
        its *original* head's slice of the block input."""
        B, T, _ = x.shape
        chunks = x.reshape(B, T, self.orig_heads, -1)[:, :, self.heads].permute(0, 2, 1, 3)
        proj = self.gru_rel_pos_linear(chunks).view(B, len(self.heads), T, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
        const = self.gru_rel_pos_const[0]  # (h, 1, 1)
        gate = gate_a * (gate_b * const[None] - 1.0) + 2.0  # (B, h, T, 1)
        return gate * position_bias[self.heads][None]  # (B, h, T, T)

    def _attention(self, x, attention_mask, position_bias, m):
        B, T, D = x.shape
        if not self.heads:
            out = self.out_proj.bias.expand(B, T, D)
            return out if m["mha"] is None else out * m["mha"]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        bias = self._wavlm_bias(x, position_bias) if self.wavlm else None
        mask = None
        if attention_mask is not None:
            mask = _additive_mask(attention_mask, x, frame_mask=self.wavlm)
        ctx = self._context(q, k, v, bias, mask, m["dim"], m["head"])
        out = self.out_proj(ctx)
        return out if m["mha"] is None else out * m["mha"]

    def _context(self, q, k, v, bias, mask, dim_mask, head_mask) -> torch.Tensor:
        """Per-head attention of the projections ``q, k, v`` (B, T, sum of kept dims), dims
        and heads gated, concatenated back to (B, T, sum of kept dims)."""
        B, T, _ = q.shape
        lens = [len(d) for d in self.dims]
        if len(set(lens)) == 1:
            d = lens[0]
            shape = (B, T, len(self.heads), d)
            qh, kh, vh = (t.view(shape).transpose(1, 2) for t in (q, k, v))
            if dim_mask is not None:
                qh = qh * dim_mask[None, :, None, :]
                vh = vh * dim_mask[None, :, None, :]
            ctx = _attend(qh, kh, vh, bias, mask, self.scaling)  # (B, h, T, d)
            if head_mask is not None:
                ctx = ctx * head_mask[None, :, None, None]
            return ctx.transpose(1, 2).reshape(B, T, -1)
        outs, start = [], 0  # differing kept dims per head: one head at a time
        for j, d in enumerate(lens):
            sl = slice(start, start + d)
            start += d
            qh, kh, vh = q[..., sl], k[..., sl], v[..., sl]
            if dim_mask is not None:
                qh, vh = qh * dim_mask[j][:d], vh * dim_mask[j][:d]
            c = _attend(qh, kh, vh, None if bias is None else bias[:, j], mask, self.scaling)
            outs.append(c if head_mask is None else c * head_mask[j])
        return torch.cat(outs, dim=-1)

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


def _attend(qh, kh, vh, bh, mask, scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling + bias + mask) v over (B, [h,] T, d) tensors."""
    s = torch.matmul(qh, kh.transpose(-1, -2)) * scaling
    if bh is not None:
        s = s + bh
    if mask is not None:
        s = s + (mask if s.dim() == 4 else mask[:, 0])
    return torch.matmul(torch.softmax(s, dim=-1), vh)


def _additive_mask(attention_mask: torch.Tensor, x: torch.Tensor, frame_mask: bool):
    """The additive (B, 1, [1 or T,] T) mask of an attention mask: WavLM's (B, T) frame mask
    (``frame_mask``; 1 = valid), a boolean 4-D mask (True = attend) or an additive one."""
    B, T = x.shape[:2]
    if frame_mask:
        mask = torch.zeros(B, 1, 1, T, dtype=x.dtype, device=x.device)
        return mask.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
    if attention_mask.dtype == torch.bool:
        mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
        return mask.masked_fill(~attention_mask, float("-inf"))
    return attention_mask.to(x.dtype)


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


# ----------------------------------------------------------------------------------------
# A model's blocks as StructuredLayers
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
