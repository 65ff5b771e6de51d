"""Inverted dot-product attention routing (Tsai, Srivastava, Goh & Salakhutdinov, ICLR 2020): the PyTorch math.

Per sample, with T passes (the authors' num_routing), votes u_ij [D], children's activations a_i (ones when not
given) and a LayerNorm over the pose dimension (learned weight gamma [D] and bias beta [D], shared by all
parents):
    pass 1:       r_ij = 1 / J                                     (softmax over parents of zeros)
    passes 2..T:  r_ij = softmax_j(<u_ij, v_j> / sqrt(D))           (v_j of the previous pass)
    every pass:   v_j = LayerNorm(s_j),  s_j = sum_i r_ij a_i u_ij  (with D = 1 no LayerNorm, as the authors' code)
The router adds the activation head sigmoid(<w, v_j> + b) on the last poses (routing.inverted_dot_product.router).

The votes are used parent-major, [B, J, I, D] (a free view when the caller produced them in that layout, else a
copy of a few samples at a time), so every sum over children and every agreement is a batched matrix-vector
product (routing.batched). On the CPU samples are routed in cache-sized chunks (routing.cpu.chunking). The
autograd Function saves only the coefficients r [T, B, J, I] and the pre-LayerNorm sums s [T, B, J, D] of every
pass; its backward is written out in routing.inverted_dot_product.backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.checks import refuse_second_order
from kernels.utils import accumulation_dtype
from routing.batched import agreement, parent_major_chunks, weighted_sum
from routing.cpu.memory import empty_like_on_huge_pages, new_empty_on_huge_pages
from routing.inverted_dot_product.backward import backward_chunks
from routing.inverted_dot_product.layer_norm import layer_norm


def route_chunk(u: Tensor, a: Tensor | None, weight: Tensor, bias: Tensor, eps: float, couplings: Tensor,
                sums: Tensor) -> None:
    """u [B, J, I, D], a [B, 1, I] or None; writes the coefficients r [T, B, J, I] and the pre-LayerNorm sums
    s [T, B, J, D] of the T = couplings.shape[0] passes."""
    B, J, I, D = u.shape
    scale = 1.0 / math.sqrt(D)
    couplings[0] = 1.0 / J  # pass 1: the softmax over parents of zeros
    sums[0] = u.sum(dim=2) / J if a is None else weighted_sum((a / J).expand(B, J, I), u)
    for t in range(1, couplings.shape[0]):
        v = layer_norm(sums[t - 1], weight, bias, eps)
        r = torch.softmax(agreement(u, v) * scale, dim=1)  # over parents
        couplings[t] = r
        sums[t] = weighted_sum(r if a is None else r * a, u)


def route_chunks(
    votes: Tensor, activations: Tensor | None, iterations: int, weight: Tensor, bias: Tensor, eps: float,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Route votes [B, I, J, D] (any strides) a cache-sized chunk of samples at a time.

    Returns the coefficients [T, B, J, I] and pre-LayerNorm sums [T, B, J, D] of every pass (in float32 for
    half-precision votes). `keep` (a contiguous [B, J, I, D] in the accumulation dtype, or None) receives the
    parent-major votes, which the backward can then read without reordering them again."""
    dtype = accumulation_dtype(votes.dtype)
    B, I, J, D = votes.shape
    couplings = new_empty_on_huge_pages(votes, (iterations, B, J, I), dtype)
    sums = votes.new_empty((iterations, B, J, D), dtype=dtype)
    for rows, u, a in parent_major_chunks(votes, activations, dtype, keep):
        route_chunk(u, a, weight, bias, eps, couplings[:, rows], sums[:, rows])
    return couplings, sums


class InvertedDotProductFunction(torch.autograd.Function):
    """(votes [B, I, J, D], activations [B, I] or None, LayerNorm weight [D], bias [D] (in the accumulation dtype),
    iterations, eps) -> (v [B, J, D] in the accumulation dtype, r [B, I, J] in the votes' dtype).

    Only the coefficients and pre-LayerNorm sums are saved; the backward reads the votes again from the caller's
    tensor, a chunk at a time (routing.inverted_dot_product.backward).
    """

    @staticmethod
    def forward(ctx, votes: Tensor, activations: Tensor | None, weight: Tensor, bias: Tensor, iterations: int,
                eps: float):
        couplings, sums = route_chunks(votes, activations, iterations, weight, bias, eps)
        ctx.save_for_backward(votes, activations, weight, bias, couplings, sums)
        ctx.eps = eps
        return layer_norm(sums[-1], weight, bias, eps), couplings[-1].transpose(1, 2).to(votes.dtype)

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, grad_r: Tensor | None):
        refuse_second_order("inverted-dot-product", "torch")
        votes, activations, weight, bias, couplings, sums = ctx.saved_tensors
        gv = torch.zeros_like(sums[-1]) if grad_v is None else grad_v.to(sums.dtype)
        gr = None if grad_r is None else grad_r.to(sums.dtype).transpose(1, 2)
        # empty_like keeps the votes' strides: a parent-major caller gets a parent-major gradient, written in place
        grad_votes = empty_like_on_huge_pages(votes) if ctx.needs_input_grad[0] else None
        grad_act = None
        if activations is not None and ctx.needs_input_grad[1]:
            grad_act = torch.empty_like(activations)
        grad_weight, grad_bias = backward_chunks(votes, activations, couplings, sums, gv, gr, weight, bias, ctx.eps,
                                                 grad_votes, grad_act)
        return grad_votes, grad_act, grad_weight, grad_bias, None, None


def activation_head(v: Tensor, head_weight: Tensor, head_bias: Tensor) -> Tensor:
    """sigmoid(<w, v_j> + b) for poses v [B, J, D], w [D], b [1] -> [B, J], in v's dtype."""
    return torch.sigmoid(v @ head_weight.to(v.dtype) + head_bias.to(v.dtype))


def route_votes(
    votes: Tensor,
    activations: Tensor | None,
    iterations: int,
    norm_weight: Tensor,
    norm_bias: Tensor,
    head_weight: Tensor,
    head_bias: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Route votes [B, I, J, D]: (v [B, J, D], sigmoid(<w, v_j> + b) [B, J], r [B, I, J] of the last pass) in the
    votes' dtype, differentiable; half-precision votes are routed in float32 (kernels.utils.accumulation_dtype)."""
    dtype = accumulation_dtype(votes.dtype)
    v, r = InvertedDotProductFunction.apply(votes, activations, norm_weight.to(dtype), norm_bias.to(dtype),
                                            iterations, eps)
    return v.to(votes.dtype), activation_head(v, head_weight, head_bias).to(votes.dtype), r
