"""The LayerNorm over the pose dimension that inverted dot-product routing applies to every parent sum, and its
closed-form backward (used by routing.inverted_dot_product.reference and .backward).

Written out with elementwise ops rather than torch.nn.functional.layer_norm: on the CPU that kernel runs an OpenMP
parallel loop even for a few rows, and the routing calls it on a chunk's [b, J, D] sums once per pass; on the
project's busy 2-core machine that loop's start-up cost far exceeded the elementwise form's whole time. The math
is the same: v = (s - mean) / sqrt(var + eps) * weight + bias, var biased.
With D = 1 there is no LayerNorm (the authors' code skips it there, where it would return the bias whatever s).
"""

from __future__ import annotations

import torch
from torch import Tensor


def standardise(s: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(xhat, rstd) for s [..., D]: xhat = (s - mean) * rstd, rstd = 1 / sqrt(var + eps) [..., 1]."""
    centred = s - s.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)
    return centred * rstd, rstd


def layer_norm(s: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm of s [..., D] over D with weight and bias [D]; the identity for D = 1."""
    if s.shape[-1] == 1:
        return s
    return standardise(s, eps)[0] * weight + bias


def layer_norm_backward(s: Tensor, grad_v: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """For v = layer_norm(s, weight, bias, eps): (grad_s, xhat); weight's gradient is sum grad_v * xhat and
    bias's sum grad_v. The identity (grad_v, s) for D = 1."""
    if s.shape[-1] == 1:
        return grad_v, s
    xhat, rstd = standardise(s, eps)
    gx = grad_v * weight
    grad_s = rstd * (gx - gx.mean(-1, keepdim=True) - xhat * (gx * xhat).mean(-1, keepdim=True))
    return grad_s, xhat
