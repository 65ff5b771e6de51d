"""Dynamic routing fused with the dense capsule layer's votes, for the CPU (see routing.cpu.fusion).

``route_poses(poses [B, I, K], transforms [I, J, D, K], activations [B, I] or None, ...)`` returns what
dynamic routing of the votes u_ij = transforms[i, j] @ poses[b, i] returns, with gradients into the poses, the
transforms and the activations, without the votes ever leaving the call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.checks import DYNAMIC_DOUBLE_BACKWARD_HINT, refuse_second_order
from routing.cpu.fusion import (
    as_votes,
    backward_buffers,
    backward_follows,
    forward_buffers,
    poses_and_transforms_gradients,
)
from routing.dynamic.backward import backward_chunks, output_gradient
from routing.dynamic.reference import route_chunks
from routing.squash import length, squash


class LinearDynamicRoutingFunction(torch.autograd.Function):
    """(poses [B, I, K], transforms [I, J, D, K], activations [B, I] or None) -> (v [B, J, D], |v| [B, J],
    c [B, I, J])."""

    @staticmethod
    def forward(ctx, poses: Tensor, transforms: Tensor, activations: Tensor | None, iterations: int,
                detach_inner: bool, eps: float, keep_votes: bool):
        votes, kept, token = forward_buffers(poses, transforms, keep_votes)
        couplings, sums = route_chunks(votes, activations, iterations, eps, keep=kept)
        v = squash(sums[-1], eps=eps)
        lengths = length(v).squeeze(-1)  # scaled: the squares of tiny poses underflow
        ctx.save_for_backward(poses, transforms, activations, couplings, sums, v, lengths)
        ctx.settings = (detach_inner, eps, token)
        return v, lengths, couplings[-1].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, grad_length: Tensor | None, grad_c: Tensor | None):
        refuse_second_order("dynamic", "torch", DYNAMIC_DOUBLE_BACKWARD_HINT)
        poses, transforms, activations, couplings, sums, v, lengths = ctx.saved_tensors
        detach_inner, eps, token = ctx.settings
        votes, product = backward_buffers(poses, transforms, token)
        gv = output_gradient(v, lengths, grad_v, grad_length)
        gc = None if grad_c is None else grad_c.transpose(1, 2)
        grad_act = None
        if activations is not None and ctx.needs_input_grad[2]:
            grad_act = torch.empty_like(activations)
        backward_chunks(votes, activations, couplings, sums, gv, gc, detach_inner, eps,
                        as_votes(product, transforms), grad_act)
        grad_poses, grad_transforms = poses_and_transforms_gradients(product, poses, transforms,
                                                                     ctx.needs_input_grad[:2])
        return grad_poses, grad_transforms, grad_act, None, None, None, None


def route_poses(poses: Tensor, transforms: Tensor, activations: Tensor | None, iterations: int,
                 detach_inner: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic routing of the votes transforms[i, j] @ poses[b, i]: (v [B, J, D], |v| [B, J], c [B, I, J])."""
    return LinearDynamicRoutingFunction.apply(poses.contiguous(), transforms.contiguous(), activations,
                                               iterations, detach_inner, eps,
                                               backward_follows(poses, transforms, activations))
