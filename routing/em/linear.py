"""EM routing fused with a capsule layer's votes, for the CPU (see routing.cpu.fusion).

``route_poses(poses [N, I, K], transforms [I, J, D, K], activations [N, I] or None, beta_u, beta_a, ...)``
returns what EM routing of the votes V_ij = transforms[i, j] @ poses[n, i] returns (with ``child_index`` for
convolutional layers, as routing.em.reference), with gradients into the poses, transforms, activations, beta_u and
beta_a, without the votes ever leaving the call. 4x4 pose matrices are routed this way with the transform
kron(I_4, W_ij) (capsules.layers.votes.matrix_transforms).
"""

from __future__ import annotations

import torch

from kernels.checks import refuse_second_order
from routing.cpu.fusion import (
    as_votes,
    backward_buffers,
    backward_follows,
    forward_buffers,
    poses_and_transforms_gradients,
)
from routing.em.backward import backward_chunks, beta_gradients
from routing.em.reference import route_chunks


class LinearEMRoutingFunction(torch.autograd.Function):
    """(poses [N, I, K], transforms [I, J, D, K], activations [N, I] or None, beta_u, beta_a [J] or [1],
    child_index [P, I] or None) -> (mu [N, J, D], a_j [N, J], R [N, I, J])."""

    @staticmethod
    def forward(ctx, poses, transforms, activations, beta_u, beta_a, child_index, lambdas, min_var, eps,
                keep_votes):
        votes, kept, token = forward_buffers(poses, transforms, keep_votes)
        R, mu, var, logit = route_chunks(votes, activations, beta_u, beta_a, child_index, lambdas, min_var,
                                         eps, keep=kept)
        ctx.save_for_backward(poses, transforms, activations, beta_u, child_index, R, mu, var, logit)
        ctx.settings = (lambdas, eps, token)
        ctx.beta_a_like = (beta_a.numel(), beta_a.dtype)
        return mu[-1], torch.sigmoid(logit[-1]), R[-1].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_mu, grad_act, grad_R):
        refuse_second_order("em", "torch")
        poses, transforms, activations, beta_u, child_index, R, mu, var, logit = ctx.saved_tensors
        lambdas, eps, token = ctx.settings
        votes, product = backward_buffers(poses, transforms, token)
        grad_activations = None
        if activations is not None and ctx.needs_input_grad[2]:
            grad_activations = torch.empty_like(activations)
        grad_bu, grad_ba = backward_chunks(votes, activations, beta_u, child_index, R, mu, var, logit, lambdas,
                                           eps, grad_mu, grad_act, grad_R, as_votes(product, transforms),
                                           grad_activations)
        grad_beta_u, grad_beta_a = beta_gradients(grad_bu, grad_ba, beta_u, ctx.beta_a_like)
        grad_poses, grad_transforms = poses_and_transforms_gradients(product, poses, transforms,
                                                                     ctx.needs_input_grad[:2])
        return (grad_poses, grad_transforms, grad_activations, grad_beta_u, grad_beta_a, None, None, None, None,
                None)


def route_poses(poses, transforms, activations, beta_u, beta_a, child_index, lambdas, min_var, eps):
    """EM routing of the votes transforms[i, j] @ poses[n, i]: (mu [N, J, D], a_j [N, J], R [N, I, J])."""
    return LinearEMRoutingFunction.apply(poses.contiguous(), transforms.contiguous(), activations, beta_u, beta_a,
                                         child_index, lambdas, min_var, eps,
                                         backward_follows(poses, transforms, activations, beta_u, beta_a))
