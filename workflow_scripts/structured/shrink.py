"""Physical pruning of a :class:`~workflow_scripts.structured.layers.StructuredLayer`: gate
values folded into the weights, removed heads / head dimensions / FFN units / sublayers cut
out, so the smaller block computes what the masked block computes.

The blocks here are ``StructuredLayer`` modules, annotated ``nn.Module``: this module does
not import :mod:`~workflow_scripts.structured.layers` (which imports it for
``StructuredLayer.fold`` / ``shrink_to``), so the two do not import each other."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    dtype=weight.dtype, device=weight.device)  # fmt: skip
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def full_masks(layer: nn.Module, masks: dict | None) -> dict:
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


def _head_rows(layer: nn.Module) -> list[list[int]]:
    """Row indices into the current q/k/v projections of every kept (head, dim)."""
    rows, start = [], 0
    for d in layer.dims:
        rows.append(list(range(start, start + len(d))))
        start += len(d)
    return rows


def _drop(new: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        new._modules.pop(name, None)
        setattr(new, name, None)


def _fold_attention(new: nn.Module, layer: nn.Module, m: dict) -> None:
    """Cut ``new``'s attention to the kept (head, dim) rows of ``layer``, dimension gates
    folded into q and v, head and sublayer gates into the out-projection."""
    mha = float(m["mha"])
    rows_all = _head_rows(layer)
    heads, dims, sel_rows, q_scale, out_scale = [], [], [], [], []
    for k, h in enumerate(layer.heads):
        if mha == 0 or float(m["head"][k]) == 0:
            continue
        keep = [i for i in range(len(layer.dims[k])) if float(m["dim"][k][i]) != 0]
        if not keep:
            continue
        heads.append(h)
        dims.append([layer.dims[k][i] for i in keep])
        sel_rows += [rows_all[k][i] for i in keep]
        q_scale += [float(m["dim"][k][i]) for i in keep]
        out_scale += [float(m["head"][k]) * mha] * len(keep)
    new.heads, new.dims, new.mha = heads, dims, mha != 0
    if not new.mha:
        _drop(new, ("q_proj", "k_proj", "v_proj", "out_proj"))
        if layer.wavlm:
            new._parameters.pop("gru_rel_pos_const", None)
            new.gru_rel_pos_const = None
        return
    idx = torch.tensor(sel_rows, dtype=torch.long, device=layer.q_proj.weight.device)
    qs = torch.tensor(q_scale, dtype=layer.q_proj.weight.dtype, device=idx.device)
    os_ = torch.tensor(out_scale, dtype=qs.dtype, device=idx.device)

    def rows(lin, scale=None):
        w, b = lin.weight[idx], None if lin.bias is None else lin.bias[idx]
        if scale is not None:
            w = w * scale[:, None]
            b = None if b is None else b * scale
        return _linear(w, b)

    new.q_proj = rows(layer.q_proj, qs)
    new.k_proj = rows(layer.k_proj)
    new.v_proj = rows(layer.v_proj, qs)
    w = layer.out_proj.weight[:, idx] * os_[None, :]
    b = None if layer.out_proj.bias is None else layer.out_proj.bias * mha
    new.out_proj = _linear(w, b)
    if layer.wavlm:
        pos = [layer.heads.index(h) for h in heads]
        new.gru_rel_pos_const = nn.Parameter(layer.gru_rel_pos_const[:, pos].clone())


def _fold_ffn(new: nn.Module, layer: nn.Module, m: dict) -> None:
    """Cut ``new``'s FFN to the kept units of ``layer``, unit and sublayer gates folded into
    the output dense layer."""
    ffn = float(m["ffn"])
    units = m["unit"]
    keep_u = [j for j in range(len(units)) if float(units[j]) != 0] if ffn != 0 else []
    new.ffn = ffn != 0
    if not new.ffn:
        _drop(new, ("intermediate_dense", "output_dense"))
        return
    idx = torch.tensor(keep_u, dtype=torch.long, device=layer.output_dense.weight.device)
    us = torch.as_tensor(units, dtype=layer.output_dense.weight.dtype,
                         device=idx.device)[idx] * ffn  # fmt: skip
    new.intermediate_dense = _linear(layer.intermediate_dense.weight[idx],
                                     layer.intermediate_dense.bias[idx])  # fmt: skip
    new.output_dense = _linear(layer.output_dense.weight[:, idx] * us[None, :],
                               layer.output_dense.bias * ffn)  # fmt: skip


@torch.no_grad()
def fold_layer(layer: nn.Module, masks: dict | None = None) -> nn.Module:
    """A physically pruned copy of ``layer``: gates (deterministic values; zeros = removed)
    folded into the weights, so its output equals the masked forward of ``layer``."""
    new = copy.copy(layer)  # shallow: modules replaced below
    new._modules = dict(layer._modules)
    new._parameters = dict(layer._parameters)
    m = full_masks(layer, masks)
    _fold_attention(new, layer, m)
    _fold_ffn(new, layer, m)
    return new


@torch.no_grad()
def shrink_layer(layer: nn.Module, structure: dict) -> nn.Module:
    """A copy of ``layer`` with the shapes of ``structure`` (values copied from the kept rows;
    used to rebuild a saved pruned model before loading its weights)."""
    ones = full_masks(layer, None)
    heads = set(structure["heads"]) if structure["mha"] else set()
    ones["mha"] = torch.tensor(1.0 if structure["mha"] else 0.0)
    ones["head"] = torch.tensor([1.0 if h in heads else 0.0 for h in layer.heads])
    dims = dict(zip(structure["heads"], structure["dims"], strict=True))
    ones["dim"] = torch.tensor(
        [[1.0 if d in dims.get(h, []) else 0.0 for d in layer.dims[k]]
         for k, h in enumerate(layer.heads)]
    )  # fmt: skip
    ones["ffn"] = torch.tensor(1.0 if structure["ffn"] else 0.0)
    n = layer.intermediate_dense.out_features
    ones["unit"] = torch.tensor([1.0 if j < structure["units"] else 0.0 for j in range(n)])
    return fold_layer(layer, ones)
