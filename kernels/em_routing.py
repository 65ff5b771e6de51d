"""EM routing (Hinton et al. 2018) as fused Triton kernels: the public op, its autograd Function and its
``torch.library`` registration (``capsule_routing::em_routing_forward`` / ``_backward``, both ``triton_op``s so
``torch.compile`` sees the kernels).

    poses, activations, assignments = em_routing(votes, activations, beta_u, beta_a, iterations=3)

The math and its numerics are in kernels/em_routing_forward.py (fused E/M-step passes) and
kernels/em_routing_backward.py (the exact backward). The oracle is routing/em.py's ``EMRouting.route``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op

from kernels.em_routing_backward import em_backward
from kernels.em_routing_forward import MAX_PARENT_TILE, em_forward
from kernels.utils import block_size, kernel_dtype_ok


@triton_op("capsule_routing::em_routing_forward", mutates_args=())
def em_routing_forward_op(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    child_index: Optional[Tensor],
    groups: int,
    iterations: int,
    final_lambda: float,
    min_var: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(poses, activations, assignments, mus, vhats, logits, masses, norms): see ``em_forward``."""
    return em_forward(votes, activations, beta_u, beta_a, child_index, groups, iterations, final_lambda,
                      min_var, eps)


@triton_op("capsule_routing::em_routing_backward", mutates_args=())
def em_routing_backward_op(
    grad_pose: Tensor,
    grad_act: Tensor,
    grad_assign: Tensor,
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    mus: Tensor,
    vhats: Tensor,
    logits: Tensor,
    masses: Tensor,
    norms: Tensor,
    child_index: Optional[Tensor],
    groups: int,
    final_lambda: float,
    min_var: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(g_votes, g_activations, per-row g_beta_u, g_beta_a [N, J]): see ``em_backward``."""
    return em_backward(grad_pose, grad_act, grad_assign, votes, activations, beta_u, mus, vhats, logits,
                       masses, norms, child_index, groups, final_lambda, min_var, eps)


class EMRoutingFunction(torch.autograd.Function):
    """(votes [N, I, J, D], activations [N, I], beta_u [J], beta_a [J] (compute dtype), child_index, groups,
    iterations, final_lambda, min_var, eps) -> (poses [N, J, D], activations [N, J], assignments [N, I, J])."""

    @staticmethod
    def forward(ctx, votes, activations, beta_u, beta_a, child_index, groups, iterations, final_lambda, min_var,
                eps):
        pose, act, assign, mus, vhats, logits, masses, norms = em_routing_forward_op(
            votes, activations, beta_u, beta_a, child_index, groups, iterations, final_lambda, min_var, eps)
        ctx.save_for_backward(votes, activations, beta_u, mus, vhats, logits, masses, norms, child_index)
        ctx.settings = (groups, final_lambda, min_var, eps)
        return pose, act, assign

    @staticmethod
    def backward(ctx, grad_pose, grad_act, grad_assign):
        votes, activations, beta_u, mus, vhats, logits, masses, norms, child_index = ctx.saved_tensors
        groups, final_lambda, min_var, eps = ctx.settings
        g_votes, g_act, g_bu, g_ba = em_routing_backward_op(
            grad_pose.contiguous(), grad_act.contiguous(), grad_assign.contiguous(), votes, activations, beta_u,
            mus, vhats, logits, masses, norms, child_index, groups, final_lambda, min_var, eps)
        return (
            g_votes if ctx.needs_input_grad[0] else None,
            g_act.to(activations.dtype) if ctx.needs_input_grad[1] else None,
            g_bu.sum(0) if ctx.needs_input_grad[2] else None,
            g_ba.sum(0) if ctx.needs_input_grad[3] else None,
            None, None, None, None, None, None,
        )


def em_unsupported_reason(votes: Tensor, activations: Tensor | None = None) -> str | None:
    """Why these (already validated) inputs are outside what the kernels handle, or None."""
    for name, t in (("votes", votes), ("activations", activations)):
        if t is not None and not kernel_dtype_ok(t):
            return f"the EM Triton kernels read float16/bfloat16/float32/float64 {name}, got {t.dtype}"
    J, D = votes.shape[2], votes.shape[3]
    if block_size(J, minimum=1) * block_size(D, minimum=1) > MAX_PARENT_TILE:
        return f"the EM Triton kernels handle J * D up to {MAX_PARENT_TILE} (padded to powers of two), got J={J}, D={D}"
    return None


def em_routing(
    votes: Tensor,
    activations: Tensor | None,
    beta_u: Tensor,
    beta_a: Tensor,
    *,
    iterations: int = 3,
    final_lambda: float = 0.01,
    min_var: float = 1e-4,
    eps: float = 1e-8,
    child_index: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """EM routing of votes [N, I, J, D] with child activations [N, I] (None: ones) and beta_u, beta_a [J] or [1].

    child_index [P, I] (integers >= 0): rows are (sample, window) pairs, P windows per sample, and child i of
    window p is the sample's child child_index[p, i]; its assignments are normalised over every (window, parent)
    it feeds. Returns (poses mu [N, J, D], activations a_j [N, J], assignments R [N, I, J]) in the votes' dtype;
    differentiable in votes, activations, beta_u and beta_a.
    """
    if not isinstance(votes, Tensor) or votes.ndim != 4 or min(votes.shape) == 0:
        raise ValueError(f"votes must be a non-empty tensor [N, I, J, D], got {getattr(votes, 'shape', votes)!r}")
    N, I, J, D = votes.shape
    if activations is not None and tuple(activations.shape) != (N, I):
        raise ValueError(f"activations must have shape [N, I] = {[N, I]}, got {list(activations.shape)}")
    reason = em_unsupported_reason(votes, activations)
    if reason:
        raise ValueError(reason)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    for name, beta in (("beta_u", beta_u), ("beta_a", beta_a)):
        if beta.ndim != 1 or beta.numel() not in (1, J):
            raise ValueError(f"{name} must have shape [J] = [{J}] or [1], got {list(beta.shape)}")
    acc = torch.float64 if votes.dtype == torch.float64 else torch.float32
    groups = 0
    if child_index is not None:
        if child_index.ndim != 2 or child_index.dtype.is_floating_point or child_index.shape[1] != I \
                or N % child_index.shape[0] != 0:
            raise ValueError(f"child_index must be an integer tensor [P, {I}] with P dividing {N}, "
                             f"got {child_index.dtype} {list(child_index.shape)}")
        child_index = child_index.to(device=votes.device, dtype=torch.int64).contiguous()
        if int(child_index.min()) < 0:
            raise ValueError("child_index must be non-negative")
        groups = int(child_index.max()) + 1
    activations = votes.new_ones(N, I) if activations is None else activations.contiguous()
    return EMRoutingFunction.apply(
        votes.contiguous(), activations, beta_u.to(acc).expand(J).contiguous(),
        beta_a.to(acc).expand(J).contiguous(), child_index, groups, iterations, float(final_lambda),
        float(min_var), float(eps))
