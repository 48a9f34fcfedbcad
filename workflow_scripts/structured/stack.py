"""The gated student: :class:`GatedStack`, StructuredLayers with hard-concrete gates, and its
expected sparsity.

Sparsity
    Fraction of the *prunable* transformer-stack parameters removed: the attention projections
    (q, k, v, out: weights and biases) and the FFN (intermediate and output dense: weights and
    biases) of every encoder block. Layer norms, WavLM's relative-position table and gating
    parameters, the positional convolution, the front end and the head are not counted.
    With gate keep-probabilities p (L0 = P(z != 0)) the expected kept count of a block is
    ``p_mha (sum_h p_h sum_i p_hi (4D + 3) + D) + p_ffn (sum_j p_j (2D + 1) + D)``, which is
    the exact parameter count of the physically pruned block for 0/1 gates.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from workflow_scripts.structured.gates import GATE_KINDS, HardConcrete
from workflow_scripts.structured.layers import StructuredLayer, structured_layers


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
