"""The squash non-linearity of Sabour et al. 2017, with an epsilon, and its closed-form backward."""

from __future__ import annotations

import torch
from torch import Tensor

SQUASH_EPS = 1e-8


def squash_scale(norm2: Tensor, eps: float = SQUASH_EPS) -> Tensor:
    """f(n) = n / ((1 + n) sqrt(n + eps)) for n = |s|^2, so that squash(s) = f(|s|^2) s (finite at s = 0)."""
    return norm2 / ((1 + norm2) * torch.sqrt(norm2 + eps))


def squash(s: Tensor, dim: int = -1, eps: float = SQUASH_EPS) -> Tensor:
    """squash(s) = |s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + eps) along `dim`; lengths stay below 1."""
    return s * squash_scale((s * s).sum(dim, keepdim=True), eps)


def squash_backward(s: Tensor, grad_v: Tensor, eps: float = SQUASH_EPS) -> Tensor:
    """Gradient of squash along the last dim: grad_s = f grad_v + 2 f'(n) <s, grad_v> s, for s, grad_v [..., D]."""
    n = (s * s).sum(-1, keepdim=True)
    g = 1 / ((1 + n) * torch.sqrt(n + eps))
    f = n * g
    df = g * (1 - n / (1 + n) - 0.5 * n / (n + eps))
    return f * grad_v + 2 * df * (s * grad_v).sum(-1, keepdim=True) * s
