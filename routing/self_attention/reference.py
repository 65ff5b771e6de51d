"""Self-attention routing of Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021): the reference PyTorch math.

Per sample, not iterative, with the children's activations a_i (ones when not given) and the learned prior
B [in_caps, J] (child i uses row i % in_caps):
    A_ij = <u_ij, sum_k a_k u_kj> / sqrt(D);  c_ij = softmax_j(A_ij);  s_j = sum_i a_i (c_ij + B_ij) u_ij;
    v_j = (1 - exp(-|s_j|)) s_j / (|s_j| + eps)   (routing.self_attention.squash);  output activation |v_j|.
The agreement is computed in its linear-in-I form: one sum t_j = sum_k a_k u_kj per parent, then <u_ij, t_j>.

As in routing.dynamic, the votes are used parent-major, [B, J, I, D] (a copy of a few samples at a time), so every
sum over children and every agreement is a batched matrix-vector product (routing.batched), and on the CPU the
samples are routed in cache-sized chunks (routing.cpu.chunking). The autograd Function saves only the couplings
[B, J, I] and the sums t, s [B, J, D]; its backward is written out in routing.self_attention.backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.checks import refuse_second_order
from kernels.utils import accumulation_dtype
from routing.batched import agreement, parent_major_chunks, weighted_sum
from routing.cpu.memory import empty_like_on_huge_pages, new_empty_on_huge_pages
from routing.self_attention.backward import backward_chunks
from routing.self_attention.squash import squash, squash_backward


def parent_major_prior(prior: Tensor, children: int, dtype: torch.dtype) -> Tensor:
    """The prior B [in_caps, J] as P [J, I] (contiguous, in `dtype`) with column i = B[i % in_caps];
    `children` I must be a multiple of in_caps (the router checks it)."""
    return prior.to(dtype).t().repeat(1, children // prior.shape[0])


def fold_prior_gradient(grad_prior_t: Tensor, prior: Tensor) -> Tensor:
    """The gradient of P [J, I] summed over the children that share a row of B, as B's [in_caps, J]."""
    in_caps, J = prior.shape
    return grad_prior_t.view(J, -1, in_caps).sum(1).t().to(prior.dtype)


def route_chunk(u: Tensor, a: Tensor | None, prior_t: Tensor, couplings: Tensor, totals: Tensor,
                sums: Tensor) -> None:
    """u [b, J, I, D], a [b, 1, I] or None, prior_t [J, I]; writes the couplings c [b, J, I], the activation-
    weighted totals t_j = sum_k a_k u_kj [b, J, D] and the pre-squash sums s [b, J, D]."""
    D = u.shape[-1]
    t = u.sum(2) if a is None else (a.unsqueeze(2) @ u).squeeze(2)
    c = (agreement(u, t) * D ** -0.5).softmax(dim=1)  # over parents
    w = c + prior_t
    if a is not None:
        w *= a
    couplings.copy_(c)
    totals.copy_(t)
    sums.copy_(weighted_sum(w, u))


def route_chunks(votes: Tensor, activations: Tensor | None, prior_t: Tensor, keep: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Route votes [B, I, J, D] (any strides) a cache-sized chunk of samples at a time; prior_t is the
    parent-major prior [J, I] in the accumulation dtype.

    Returns the couplings [B, J, I], totals t [B, J, D] and pre-squash sums s [B, J, D] (in float32 for
    half-precision votes). `keep` (a contiguous [B, J, I, D] in the accumulation dtype, or None) receives the
    parent-major votes, which the backward can then read without reordering them again."""
    dtype = accumulation_dtype(votes.dtype)
    B, I, J, D = votes.shape
    couplings = new_empty_on_huge_pages(votes, (B, J, I), dtype)
    totals = votes.new_empty((B, J, D), dtype=dtype)
    sums = votes.new_empty((B, J, D), dtype=dtype)
    for rows, u, a in parent_major_chunks(votes, activations, dtype, keep):
        route_chunk(u, a, prior_t, couplings[rows], totals[rows], sums[rows])
    return couplings, totals, sums


class SelfAttentionRoutingFunction(torch.autograd.Function):
    """(votes [B, I, J, D], activations [B, I] or None, prior B [in_caps, J], eps) -> (v [B, J, D], |v| [B, J],
    c [B, I, J]) in the votes' dtype, with gradients into the votes, the activations and the prior.

    Only the couplings and the sums t, s are saved; the backward reads the votes again from the caller's tensor,
    a chunk at a time (routing.self_attention.backward).
    """

    @staticmethod
    def forward(ctx, votes: Tensor, activations: Tensor | None, prior: Tensor, eps: float):
        dtype = accumulation_dtype(votes.dtype)
        prior_t = parent_major_prior(prior, votes.shape[1], dtype)
        couplings, totals, sums = route_chunks(votes, activations, prior_t)
        v, length = squash(sums, eps)
        ctx.save_for_backward(votes, activations, prior, couplings, totals, sums)
        ctx.eps = eps
        out_dtype = votes.dtype
        return v.to(out_dtype), length.to(out_dtype), couplings.transpose(1, 2).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, grad_length: Tensor | None, grad_c: Tensor | None):
        refuse_second_order("self-attention", "torch")
        votes, activations, prior, couplings, totals, sums = ctx.saved_tensors
        gs = squash_backward(sums, grad_v, grad_length, ctx.eps)
        gc = None if grad_c is None else grad_c.to(sums.dtype).transpose(1, 2)
        # empty_like keeps the votes' strides: a parent-major caller gets a parent-major gradient, written in place
        grad_votes = empty_like_on_huge_pages(votes) if ctx.needs_input_grad[0] else None
        grad_act = None
        if activations is not None and ctx.needs_input_grad[1]:
            grad_act = torch.empty_like(activations)
        prior_t = parent_major_prior(prior, votes.shape[1], sums.dtype)
        grad_prior_t = backward_chunks(votes, activations, prior_t, couplings, totals, gs, gc, grad_votes,
                                       grad_act)
        grad_prior = fold_prior_gradient(grad_prior_t, prior) if ctx.needs_input_grad[2] else None
        return grad_votes, grad_act, grad_prior, None


def route_votes(votes: Tensor, activations: Tensor | None, prior: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Self-attention routing of votes [B, I, J, D]: (v [B, J, D], |v| [B, J], c [B, I, J]), differentiable."""
    return SelfAttentionRoutingFunction.apply(votes, activations, prior, eps)
