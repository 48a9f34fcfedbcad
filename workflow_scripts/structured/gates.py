"""Hard-concrete L0 gates (Louizos et al. 2018) and their deterministic test-time values
(DPHuBERT), one :class:`HardConcrete` per gate vector of a block."""

from __future__ import annotations

import math

import torch
from torch import nn

# The structures that can carry gates (``config.structured.gates``): whole attention / FFN
# sublayers, attention heads, dimensions within each head, FFN intermediate units.
GATE_KINDS = ("layers", "heads", "head_dims", "ffn_units")


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
