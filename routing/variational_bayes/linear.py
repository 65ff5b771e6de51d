"""Variational Bayes routing fused with a dense capsule layer's votes, for the CPU (see routing.cpu.fusion).

``route_poses(poses [N, I, K], transforms [I, J, D, K], activations [N, I] or None, beta_u, beta_a, priors)``
returns what variational Bayes routing of the votes V_ij = transforms[i, j] @ poses[n, i] returns, with gradients
into the poses, transforms, activations, beta_u and beta_a, without the votes ever leaving the call. 4x4 pose
matrices are routed this way with the transforms kron(I_4, W_ij^T) (capsules.layers.votes.matrix_transforms).
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
from routing.variational_bayes.backward import Priors, backward_chunks
from routing.variational_bayes.reference import route_chunks


class LinearVariationalBayesRoutingFunction(torch.autograd.Function):
    """(poses [N, I, K], transforms [I, J, D, K], activations [N, I] or None, beta_u, beta_a [J] or [1], priors)
    -> (m [N, J, D], a_j [N, J], R [N, I, J])."""

    @staticmethod
    def forward(ctx, poses, transforms, activations, beta_u, beta_a, priors, keep_votes):
        votes, kept, token = forward_buffers(poses, transforms, keep_votes)
        R, mu, P, m, logit = route_chunks(votes, activations, beta_u, beta_a, priors, keep=kept)
        act = torch.sigmoid(logit)
        ctx.save_for_backward(poses, transforms, activations, beta_u, beta_a, R, mu, P, act)
        ctx.settings = (priors, token)
        return m, act, R[-1].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_m, grad_act, grad_R):
        refuse_second_order("variational-bayes", "torch")
        poses, transforms, activations, beta_u, beta_a, R, mu, P, act = ctx.saved_tensors
        priors, token = ctx.settings
        votes, product = backward_buffers(poses, transforms, token)
        grad_activations = None
        if activations is not None and ctx.needs_input_grad[2]:
            grad_activations = torch.empty_like(activations)
        grad_beta_u, grad_beta_a = backward_chunks(votes, activations, beta_u, beta_a, R, mu, P, act, priors,
                                                   grad_m, grad_act, grad_R, as_votes(product, transforms),
                                                   grad_activations)
        grad_poses, grad_transforms = poses_and_transforms_gradients(product, poses, transforms,
                                                                     ctx.needs_input_grad[:2])
        return grad_poses, grad_transforms, grad_activations, grad_beta_u, grad_beta_a, None, None


def route_poses(poses: Tensor, transforms: Tensor, activations: Tensor | None, beta_u: Tensor, beta_a: Tensor,
                priors: Priors) -> tuple[Tensor, Tensor, Tensor]:
    """Variational Bayes routing of the votes transforms[i, j] @ poses[n, i]: (m [N, J, D], a_j [N, J],
    R [N, I, J])."""
    return LinearVariationalBayesRoutingFunction.apply(poses.contiguous(), transforms.contiguous(), activations,
                                                       beta_u, beta_a, priors,
                                                       backward_follows(poses, transforms, activations, beta_u,
                                                                        beta_a))
