"""Inverted dot-product routing fused with the dense capsule layer's votes, for the CPU (see routing.cpu.fusion).

``route_poses(poses [B, I, K], transforms [I, J, D, K], activations [B, I] or None, ...)`` returns what routing
the votes u_ij = transforms[i, j] @ poses[b, i] returns, with gradients into the poses, the transforms, the
activations and the LayerNorm's weight and bias, without the votes ever leaving the call.
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
from routing.inverted_dot_product.backward import backward_chunks
from routing.inverted_dot_product.layer_norm import layer_norm
from routing.inverted_dot_product.reference import activation_head, route_chunks


class LinearInvertedDotProductFunction(torch.autograd.Function):
    """(poses [B, I, K], transforms [I, J, D, K], activations [B, I] or None, LayerNorm weight [D], bias [D],
    iterations, eps, keep_votes) -> (v [B, J, D], r [B, I, J])."""

    @staticmethod
    def forward(ctx, poses: Tensor, transforms: Tensor, activations: Tensor | None, weight: Tensor, bias: Tensor,
                iterations: int, eps: float, keep_votes: bool):
        votes, kept, token = forward_buffers(poses, transforms, keep_votes)
        couplings, sums = route_chunks(votes, activations, iterations, weight, bias, eps, keep=kept)
        ctx.save_for_backward(poses, transforms, activations, weight, bias, couplings, sums)
        ctx.settings = (eps, token)
        return layer_norm(sums[-1], weight, bias, eps), couplings[-1].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, grad_r: Tensor | None):
        refuse_second_order("inverted-dot-product", "torch")
        poses, transforms, activations, weight, bias, couplings, sums = ctx.saved_tensors
        eps, token = ctx.settings
        votes, product = backward_buffers(poses, transforms, token)
        gv = torch.zeros_like(sums[-1]) if grad_v is None else grad_v
        gr = None if grad_r is None else grad_r.transpose(1, 2)
        grad_act = None
        if activations is not None and ctx.needs_input_grad[2]:
            grad_act = torch.empty_like(activations)
        grad_weight, grad_bias = backward_chunks(votes, activations, couplings, sums, gv, gr, weight, bias, eps,
                                                 as_votes(product, transforms), grad_act)
        grad_poses, grad_transforms = poses_and_transforms_gradients(product, poses, transforms,
                                                                     ctx.needs_input_grad[:2])
        return grad_poses, grad_transforms, grad_act, grad_weight, grad_bias, None, None, None


def route_poses(poses: Tensor, transforms: Tensor, activations: Tensor | None, iterations: int,
                norm_weight: Tensor, norm_bias: Tensor, head_weight: Tensor, head_bias: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Inverted dot-product routing of the votes transforms[i, j] @ poses[b, i]: (v [B, J, D],
    sigmoid(<w, v_j> + b) [B, J], r [B, I, J]). All tensors share one full-precision dtype (routing.cpu.fusion)."""
    keep = backward_follows(poses, transforms, activations, norm_weight, norm_bias)
    v, r = LinearInvertedDotProductFunction.apply(poses.contiguous(), transforms.contiguous(), activations,
                                                  norm_weight, norm_bias, iterations, eps, keep)
    return v, activation_head(v, head_weight, head_bias), r
