"""Dynamic routing by agreement (Sabour, Frosst & Hinton 2017, Procedure 1): the reference PyTorch math.

Per sample, with logits b [I, J] starting at 0 and iterations r = 1..T:
    c = softmax_j(b);  s_j = sum_i c_ij a_i u_ij;  v_j = squash(s_j);  b_ij += <u_ij, v_j>  (not after the last)
The children's activations a_i (ones when not given) weight each vote in the sum.

The votes are used parent-major, [B, J, I, D] (a free view when the caller produced them in that layout, else a
copy of a few samples at a time), so every sum over children and every agreement is a batched matrix-vector
product (routing.batched). On the CPU samples are routed in cache-sized chunks (routing.cpu.chunking). The
autograd Function saves only the couplings and pre-squash sums of every iteration; its backward is written out
in routing.dynamic.backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.checks import DYNAMIC_DOUBLE_BACKWARD_HINT, refuse_second_order
from kernels.utils import accumulation_dtype
from routing.batched import agreement, parent_major_chunks, weighted_sum
from routing.cpu.memory import empty_like_on_huge_pages, new_empty_on_huge_pages
from routing.dynamic.backward import backward_chunks, output_gradient
from routing.squash import length, squash


def route_chunk(u: Tensor, a: Tensor | None, iterations: int, eps: float, couplings: Tensor, sums: Tensor) -> None:
    """u [B, J, I, D], a [B, 1, I] or None; writes couplings [T, B, J, I] and pre-squash sums s [T, B, J, D]."""
    B, J, I, _ = u.shape
    logits = u.new_zeros(B, J, I)
    for r in range(iterations):
        c = logits.softmax(dim=1)  # over parents
        s = weighted_sum(c if a is None else c * a, u)  # [B, J, D]
        couplings[r] = c
        sums[r] = s
        if r < iterations - 1:
            logits += agreement(u, squash(s, eps=eps))


def route_chunks(
    votes: Tensor, activations: Tensor | None, iterations: int, eps: float, keep: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Route votes [B, I, J, D] (any strides) a cache-sized chunk of samples at a time.

    Returns the couplings [T, B, J, I] and pre-squash sums [T, B, J, D] of every iteration (in float32 for
    half-precision votes). `keep` (a contiguous [B, J, I, D] in the accumulation dtype, or None) receives the
    parent-major votes, which the backward can then read without reordering them again."""
    dtype = accumulation_dtype(votes.dtype)
    B, I, J, D = votes.shape
    couplings = new_empty_on_huge_pages(votes, (iterations, B, J, I), dtype)
    sums = votes.new_empty((iterations, B, J, D), dtype=dtype)
    for rows, u, a in parent_major_chunks(votes, activations, dtype, keep):
        route_chunk(u, a, iterations, eps, couplings[:, rows], sums[:, rows])
    return couplings, sums


class DynamicRoutingFunction(torch.autograd.Function):
    """(votes [B, I, J, D], activations [B, I] or None, iterations, detach_inner, eps) -> (v [B, J, D],
    |v| [B, J], c [B, I, J]), in the votes' dtype.

    Only the couplings and pre-squash sums are saved; the backward reads the votes again from the caller's
    tensor, a chunk at a time (routing.dynamic.backward).
    """

    @staticmethod
    def forward(ctx, votes: Tensor, activations: Tensor | None, iterations: int, detach_inner: bool, eps: float):
        couplings, sums = route_chunks(votes, activations, iterations, eps)
        v = squash(sums[-1], eps=eps)
        lengths = length(v).squeeze(-1)  # scaled: the squares of tiny poses underflow
        ctx.save_for_backward(votes, activations, couplings, sums, v, lengths)
        ctx.settings = (detach_inner, eps)
        out_dtype = votes.dtype
        return v.to(out_dtype), lengths.to(out_dtype), couplings[-1].transpose(1, 2).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, grad_length: Tensor | None, grad_c: Tensor | None):
        refuse_second_order("dynamic", "torch", DYNAMIC_DOUBLE_BACKWARD_HINT)
        votes, activations, couplings, sums, v, lengths = ctx.saved_tensors
        detach_inner, eps = ctx.settings
        gv = output_gradient(v, lengths, grad_v, grad_length)
        gc = None if grad_c is None else grad_c.to(v.dtype).transpose(1, 2)
        # empty_like keeps the votes' strides: a parent-major caller gets a parent-major gradient, written in place
        grad_votes = empty_like_on_huge_pages(votes) if ctx.needs_input_grad[0] else None
        grad_act = None
        if activations is not None and ctx.needs_input_grad[1]:
            grad_act = torch.empty_like(activations)
        backward_chunks(votes, activations, couplings, sums, gv, gc, detach_inner, eps, grad_votes, grad_act)
        return grad_votes, grad_act, None, None, None


def route_votes(
    votes: Tensor, activations: Tensor | None, iterations: int, detach_inner: bool, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic routing of votes [B, I, J, D]: (v [B, J, D], |v| [B, J], c [B, I, J]), differentiable."""
    return DynamicRoutingFunction.apply(votes, activations, iterations, detach_inner, eps)


def route_votes_twice_differentiable(
    votes: Tensor, activations: Tensor | None, iterations: int, detach_inner: bool, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The same routing as route_votes, in plain PyTorch autograd: differentiable twice (gradient penalties,
    Hessian-vector products), at the cost of votes-sized temporaries kept for the backward. With detach_inner the
    iterations that only update the logits see detached votes and activations, as in route_votes."""
    dtype = accumulation_dtype(votes.dtype)
    u = votes.to(dtype).transpose(1, 2)  # [B, J, I, D]
    a = None if activations is None else activations.to(dtype).unsqueeze(1)  # [B, 1, I]
    logits = u.new_zeros(u.shape[:3])
    for r in range(iterations):
        last = r == iterations - 1
        if detach_inner and not last:
            u_r, a_r = u.detach(), None if a is None else a.detach()
        else:
            u_r, a_r = u, a
        c = logits.softmax(dim=1)  # over parents
        v = squash(weighted_sum(c if a_r is None else c * a_r, u_r), eps=eps)
        if not last:
            logits = logits + agreement(u_r, v)
    out = votes.dtype
    return v.to(out), length(v).squeeze(-1).to(out), c.transpose(1, 2).to(out)
