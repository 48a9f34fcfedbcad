"""Task-agnostic training of the gates: the gated student (a copy of the fine-tuned model's
encoder blocks) reads the cached input of block 0 and is distilled to the teacher states of
chosen layers (L1 or MSE plus a negative-cosine term), with a Lagrangian
``lambda1 (s - t) + lambda2 (s - t)^2`` on the expected sparsity ``s`` (lambdas by gradient
ascent, target ``t`` warmed up linearly). The teacher states are read from the training cache
(``structured.distill.teacher: cached``) or computed at every step from the same block-0
input by the frozen fine-tuned blocks (:class:`ComputedTeacher`, ``computed``)."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workflow_scripts.backbones.evaluate import autocast
from workflow_scripts.structured.layers import structured_layers
from workflow_scripts.structured.stack import GatedStack


class ComputedTeacher(nn.Module):
    """The teacher states of ``layers`` computed from a batch of block-0 inputs by a frozen
    copy of the fine-tuned model's blocks (up to the highest distilled layer), as the cache
    would hold them: under the cache job's precision (bf16 autocast on CUDA, float32 on CPU:
    ``backbones.evaluate.autocast``) and rounded to float16, returned as float32. State i is
    block i's raw output, as the student's and the cache's (before the final LayerNorm of
    pre-LN models). Differs from the cached states only in its input: the float16 cached
    block-0 input instead of the unrounded one inside the cache job's forward pass."""

    def __init__(self, model, layers) -> None:
        super().__init__()
        self.layers = sorted(int(i) for i in layers)
        blocks = [copy.deepcopy(lay) for lay in structured_layers(model)[: max(self.layers)]]
        self.stack = GatedStack(blocks).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ComputedTeacher:
        return super().train(False)  # always frozen, in eval mode

    @torch.no_grad()
    def forward(self, x0: torch.Tensor) -> dict[int, torch.Tensor]:
        with autocast(x0.device):
            out = self.stack(x0, layers=self.layers, mode="ones")
        return {i: out[i].to(torch.float16).float() for i in self.layers}


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


def train_gates(stack: GatedStack, x0: np.ndarray, targets: dict[int, np.ndarray],
                target_sparsity: float, steps: int = 300, batch_size: int = 16,
                lr: float = 2e-4, gate_lr: float = 0.05, lambda_lr: float = 0.05,
                warmup_frac: float = 0.3, loss: str = "l1", cos_weight: float = 1.0,
                seed: int = 0, device="cpu", log=None,
                progress: bool = False) -> list[dict]:  # fmt: skip
    """Distil the gated ``stack`` to the cached teacher states and drive its expected sparsity
    to ``target_sparsity``. ``x0`` (N, T, D): the input of block 0; ``targets``: hidden-state
    index -> (N, T, D) teacher states (arrays, or lazy views of the cache,
    :class:`~workflow_scripts.backbones.rows.CachedRows`: each step reads only its mini-batch of
    ``batch_size`` random rows, cast to float32 on ``device``). Weights (AdamW, ``lr``), gate
    log-alphas (Adam, ``gate_lr``) descend; lambda1, lambda2 ascend (their gradients are
    negated). ``targets`` may instead be a :class:`ComputedTeacher`, which computes the
    teacher states from each mini-batch of ``x0``. Returns the per-step history (loss terms,
    expected sparsity, target, lambdas)."""
    from tqdm import tqdm

    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    stack.to(device).train()
    lambdas = torch.zeros(2, device=device, requires_grad=True)
    opt_w = torch.optim.AdamW(stack.weight_parameters(), lr=lr, weight_decay=0.0)
    opt_g = torch.optim.Adam(stack.gate_parameters(), lr=gate_lr)
    opt_l = torch.optim.Adam([lambdas], lr=lambda_lr)
    computed = isinstance(targets, ComputedTeacher)
    if computed:
        targets.to(device)
    layers = targets.layers if computed else sorted(targets)
    N = len(x0)
    bs = min(batch_size, N)
    history = []
    for step in tqdm(range(steps), desc="structured", disable=not progress, mininterval=10):
        idx = np.sort(rng.choice(N, size=bs, replace=False))
        x = torch.as_tensor(np.asarray(x0[idx]), dtype=torch.float32, device=device)
        if computed:
            teach = targets(x)
        else:
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
