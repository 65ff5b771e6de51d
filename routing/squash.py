"""The squash non-linearity of Sabour et al. 2017, with an epsilon, and its closed-form backward.

squash(s) = f(n) s with n = |s| and f(n) = n^2 / ((1 + n^2) sqrt(n^2 + eps)). Both are computed from the length n,
itself taken from s scaled by its largest entry, never from |s|^2 directly: |s|^2 overflows float32 from
|s| ~ 1.8e19 (and (1 + n^2) sqrt(n^2) from ~3e12), which would make every pose NaN or every length 0. For n <= 1 f is
evaluated as written; for n > 1 as 1 / ((n + 1/n) sqrt(1 + eps/n^2)), which is the same function and stays finite
up to the largest float. The Triton kernels (kernels.dynamic.tiles) use the same forms.
"""

from __future__ import annotations

import torch
from torch import Tensor

SQUASH_EPS = 1e-8


def length(s: Tensor, dim: int = -1) -> Tensor:
    """|s| along `dim` (kept as a size-1 dim), without overflow or underflow of the squares: s is divided by its
    largest |entry| first. Differentiable (0 gradient at s = 0)."""
    peak = s.detach().abs().amax(dim, keepdim=True)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    return scale * torch.linalg.vector_norm(s / scale, dim=dim, keepdim=True)


def _factors(n: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(f(n), f(n) / min(n, 1)^2, n f'(n) / f(n)) for lengths n >= 0. Each branch is fed only the lengths it is
    written for, and no square of a length above 1 is formed, so nothing overflows or divides by zero."""
    small = n.clamp(max=1)
    large = n.clamp(min=1)
    small2 = small * small
    g_small = 1 / ((1 + small2) * torch.sqrt(small2 + eps))
    large_sum = large + 1 / large  # (1 + n^2) / n
    f_large = 1 / (large_sum * torch.sqrt(1 + eps / large / large))
    # n f'/f = 2 / (1 + n^2) - n^2 / (n^2 + eps)
    slope_small = 2 / (1 + small2) - small2 / (small2 + eps)
    slope_large = 2 / large / large_sum - 1 / (1 + eps / large / large)
    above = n > 1
    return (torch.where(above, f_large, small2 * g_small), torch.where(above, f_large, g_small),
            torch.where(above, slope_large, slope_small))


def squash_factor(n: Tensor, eps: float = SQUASH_EPS) -> Tensor:
    """f(n) = n^2 / ((1 + n^2) sqrt(n^2 + eps)) for lengths n = |s| >= 0, so that squash(s) = f(|s|) s."""
    return _factors(n, eps)[0]


def squash(s: Tensor, dim: int = -1, eps: float = SQUASH_EPS) -> Tensor:
    """squash(s) = |s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + eps) along `dim`; lengths stay below 1. Finite for every
    finite s (see the module docstring)."""
    return s * squash_factor(length(s, dim), eps)


def squash_backward(s: Tensor, grad_v: Tensor, eps: float = SQUASH_EPS) -> Tensor:
    """Gradient of squash along the last dim, for s, grad_v [..., D]:
        grad_s = f grad_v + n f'(n) <e, grad_v> e,   e = s / n,   n f'(n) = f (2 / (1 + n^2) - n^2 / (n^2 + eps)),
    written with t = s / max(n, 1) in place of e so that it is finite at s = 0 and for the largest s."""
    n = length(s)
    f, f_over, slope = _factors(n, eps)
    t = s / n.clamp(min=1)
    return f * grad_v + f_over * slope * (t * grad_v).sum(-1, keepdim=True) * t
