"""The closed-form backward of inverted dot-product routing (routing.inverted_dot_product.reference), a chunk of
samples at a time.

Going back over the passes t = T-1, ..., 0 with gv_t the gradient of the poses v_t = LayerNorm(s_t):
    gs_t = LayerNorm backward of gv_t                   (and gamma += sum gv_t * xhat_t, beta += sum gv_t)
    gw_t[j, i] = <gs_t[j], u_ij>                        (gradient of the weights w_t = r_t a of the sum s_t)
    a_i gets sum_j r_t[j, i] gw_t[j, i]
    for t >= 1: gr_t = gw_t a (+ the assignments' gradient at t = T-1),
                gL_t = r_t (gr_t - sum_j r_t gr_t) / sqrt(D)   (softmax backward over parents, the 1/sqrt(D) scale)
                gv_{t-1} = sum_i gL_t[j, i] u_ij
The votes' gradient, sum_t w_t (x) gs_t + sum_{t >= 1} gL_t (x) v_{t-1}, is written once, in the votes' own layout,
as one batched rank-(2T-1) product. It is recomputed from the saved coefficients [T, B, J, I] and pre-LayerNorm
sums [T, B, J, D] (both 1/D the size of the votes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from routing.batched import agreement, parent_major_chunks, votes_gradient_chunk, weighted_sum
from routing.inverted_dot_product.layer_norm import layer_norm, layer_norm_backward


def backward_chunk(
    u: Tensor,
    a: Tensor | None,
    couplings: Tensor,
    sums: Tensor,
    grad_v: Tensor,
    grad_r: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Gradients of the routing passes into u [B, J, I, D] (written to `out` when given), a [B, 1, I] (None when a
    is None) and the LayerNorm's weight and bias [D].

    grad_v [B, J, D] is the gradient of the last pass's poses, grad_r [B, J, I] (or None) that of its
    coefficients. The votes' gradient is one batched product of [B, J, I, K] by [B, J, K, D] (K = 2T - 1).
    """
    T = couplings.shape[0]
    B, J, I, D = u.shape
    scale = 1.0 / math.sqrt(D)
    K = 2 * T - 1
    left, right = u.new_empty(B, J, K, I), u.new_empty(B, J, K, D)  # factors of the votes' gradient
    grad_a = None if a is None else torch.zeros_like(a)
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    gv = grad_v
    k = 0
    for t in range(T - 1, -1, -1):
        r = couplings[t]
        gs, xhat = layer_norm_backward(sums[t], gv, weight, eps)
        if D > 1:
            grad_weight += (gv * xhat).sum((0, 1))
            grad_bias += gv.sum((0, 1))
        left[:, :, k] = r if a is None else r * a
        right[:, :, k] = gs
        k += 1
        if t == 0 and a is None:
            break  # the first pass's coefficients are constants
        gw = agreement(u, gs)  # <grad_s_j, u_ij>  [B, J, I]
        if a is not None:
            grad_a += (gw * r).sum(1, keepdim=True)
        if t == 0:
            break
        gr = gw if a is None else gw * a
        if t == T - 1 and grad_r is not None:
            gr = gr + grad_r
        gl = r * (gr - (gr * r).sum(1, keepdim=True)) * scale  # softmax backward over parents, then the scale
        left[:, :, k] = gl
        right[:, :, k] = layer_norm(sums[t - 1], weight, bias, eps)
        k += 1
        gv = weighted_sum(gl, u)
    # [B*J, I, K] @ [B*J, K, D]: the transposed left factor is read in place by the BLAS
    product = torch.bmm(left.view(B * J, K, I).transpose(1, 2), right.view(B * J, K, D),
                        out=None if out is None else out.view(B * J, I, D))
    return product.view(B, J, I, D), grad_a, grad_weight, grad_bias


def backward_chunks(
    votes: Tensor,
    activations: Tensor | None,
    couplings: Tensor,
    sums: Tensor,
    gv: Tensor,
    gr: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    grad_votes: Tensor | None,
    grad_act: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The routing backward, a chunk of samples at a time: writes the gradient of the votes [B, I, J, D] into
    grad_votes (any strides; it may be the votes' own memory, since each chunk is read before it is written)
    and that of the activations [B, I] into grad_act (either may be None); returns those of the LayerNorm's weight
    and bias. gv [B, J, D] and gr [B, J, I] (or None) are the gradients of the last pass's poses and
    coefficients."""
    dtype = sums.dtype
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    for rows, u, a in parent_major_chunks(votes, activations, dtype):
        out, copy_to = votes_gradient_chunk(grad_votes, rows, dtype)
        grad_u, grad_a, gw, gb = backward_chunk(u, a, couplings[:, rows], sums[:, rows], gv[rows],
                                                None if gr is None else gr[rows], weight, bias, eps,
                                                out=out)
        grad_weight += gw
        grad_bias += gb
        if copy_to is not None:
            copy_to.copy_(grad_u)
        if grad_act is not None:
            grad_act[rows] = grad_a.squeeze(1)
    return grad_weight, grad_bias
