"""The squash of Efficient-CapsNet, v = (1 - exp(-|s|)) s / |s|, with an epsilon, and its closed-form backward.

The authors' code (EscVM/Efficient-CapsNet, utils/layers.py, class Squash) computes
(1 - 1 / (exp(n) + eps)) * s / (n + eps) with n = |s| and eps = 1e-20. Here
    f(n) = (1 - exp(-n)) / (n + eps),  v = f(n) s,  |v| = f(n) n,
with 1 - exp(-n) as -expm1(-n) (accurate for small n), exp(-n) instead of 1 / exp(n) (no overflow of exp for
large n) and n = |s| taken from s scaled by its largest entry, so that no square of s over- or underflows. Every
quantity is a function of n and of the unit vector s / n (taken as 0 at s = 0): nothing needs |s|^2. With
eps > 0, v and its gradient are finite, and 0, at s = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def safe_norm(s: Tensor) -> Tensor:
    """|s| along the last dim, [..., D] -> [..., 1], from s / max|s_d| (no square over- or underflows)."""
    largest = s.abs().amax(-1, keepdim=True)
    scale = torch.where(largest > 0, largest, torch.ones_like(largest))
    return largest * torch.linalg.vector_norm(s / scale, dim=-1, keepdim=True)


def unit(s: Tensor, n: Tensor) -> Tensor:
    """s / |s| for s [..., D] and n = |s| [..., 1]; 0 where s = 0."""
    return s / torch.where(n > 0, n, torch.ones_like(n))


def squash(s: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(v [..., D], |v| [...]) with v = (1 - exp(-|s|)) s / (|s| + eps) along the last dim."""
    n = safe_norm(s)
    f = -torch.expm1(-n) / (n + eps)
    return f * s, (f * n).squeeze(-1)


def squash_backward(s: Tensor, grad_v: Tensor | None, grad_length: Tensor | None, eps: float) -> Tensor:
    """Gradient of s [..., D] from those of v [..., D] and |v| [...] (either may be None).

    With n = |s|, u = s / n, f' = (exp(-n) - f) / (n + eps):
        grad_s = f grad_v + (n f' <u, grad_v> + (f + n f') grad_|v|) u,   f + n f' = (f eps + n exp(-n)) / (n + eps).
    """
    n = safe_norm(s)
    e = torch.exp(-n)
    f = -torch.expm1(-n) / (n + eps)
    u = unit(s, n)
    coef = torch.zeros_like(n)
    grad_s = torch.zeros_like(s)
    if grad_v is not None:
        grad_v = grad_v.to(s.dtype)
        grad_s = f * grad_v
        coef = n * (e - f) / (n + eps) * (u * grad_v).sum(-1, keepdim=True)
    if grad_length is not None:
        coef = coef + grad_length.to(s.dtype).unsqueeze(-1) * (f * eps + n * e) / (n + eps)
    return grad_s + coef * u
