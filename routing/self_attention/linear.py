"""Self-attention routing fused with the dense capsule layer's votes, for the CPU (see routing.cpu.fusion).

``route_poses(poses [B, I, K], transforms [I, J, D, K], activations [B, I] or None, prior, eps)`` returns what
self-attention routing of the votes u_ij = transforms[i, j] @ poses[b, i] returns, with gradients into the
poses, the transforms, the activations and the prior, without the votes ever leaving the call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.checks import refuse_second_order
from routing.cpu.fusion import (
    as_votes,
    backward_buffers,
    backward_follows,
    forward_buffers,
    poses_and_transforms_gradients,
)
from routing.self_attention.backward import backward_chunks
from routing.self_attention.reference import fold_prior_gradient, parent_major_prior, route_chunks
from routing.self_attention.squash import squash, squash_backward


class LinearSelfAttentionRoutingFunction(torch.autograd.Function):
    """(poses [B, I, K], transforms [I, J, D, K], activations [B, I] or None, prior [in_caps, J], eps) ->
    (v [B, J, D], |v| [B, J], c [B, I, J])."""

    @staticmethod
    def forward(ctx, poses: Tensor, transforms: Tensor, activations: Tensor | None, prior: Tensor, eps: float,
                keep_votes: bool):
        votes, kept, token = forward_buffers(poses, transforms, keep_votes)
        prior_t = parent_major_prior(prior, poses.shape[1], poses.dtype)
        couplings, totals, sums = route_chunks(votes, activations, prior_t, keep=kept)
        v, length = squash(sums, eps)
        ctx.save_for_backward(poses, transforms, activations, prior, couplings, totals, sums)
        ctx.settings = (eps, token)
        return v, length, couplings.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, grad_length: Tensor | None, grad_c: Tensor | None):
        refuse_second_order("self-attention", "torch")
        poses, transforms, activations, prior, couplings, totals, sums = ctx.saved_tensors
        eps, token = ctx.settings
        votes, product = backward_buffers(poses, transforms, token)
        gs = squash_backward(sums, grad_v, grad_length, eps)
        gc = None if grad_c is None else grad_c.transpose(1, 2)
        grad_act = None
        if activations is not None and ctx.needs_input_grad[2]:
            grad_act = torch.empty_like(activations)
        need_votes = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        prior_t = parent_major_prior(prior, poses.shape[1], sums.dtype)
        grad_prior_t = backward_chunks(votes, activations, prior_t, couplings, totals, gs, gc,
                                       as_votes(product, transforms) if need_votes else None, grad_act)
        grad_poses, grad_transforms = poses_and_transforms_gradients(product, poses, transforms,
                                                                     ctx.needs_input_grad[:2])
        grad_prior = fold_prior_gradient(grad_prior_t, prior) if ctx.needs_input_grad[3] else None
        return grad_poses, grad_transforms, grad_act, grad_prior, None, None


def route_poses(poses: Tensor, transforms: Tensor, activations: Tensor | None, prior: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Self-attention routing of the votes transforms[i, j] @ poses[b, i]: (v [B, J, D], |v| [B, J],
    c [B, I, J])."""
    return LinearSelfAttentionRoutingFunction.apply(poses.contiguous(), transforms.contiguous(), activations,
                                                    prior, eps, backward_follows(poses, transforms, activations,
                                                                                 prior))
