"""EM routing of a dense capsule layer's votes formed inside the kernels: launcher, torch.library registration,
autograd Function and the public function.

    poses, activations, assignments = em_routing_linear(x, transforms, activations, beta_u, beta_a, iterations=3)

x [N, I, K] (any strides), transforms W [I, J, D, K] (one dtype), activations [N, I] or None (ones), beta_u and
beta_a [J] or [1] -> what ``em_routing(votes, ...)`` returns for the votes V_ij = W[i, j] @ x[n, i], in x's dtype.
The forward's partials kernel (kernels/em/votes_forward.py) forms the votes tile by tile and never writes them;
the finalize kernel is the unfused one. The backward forms the votes once in the accumulation dtype, runs the
unfused backward kernels (kernels/em/backward.py) for their gradient and those of the activations and betas, and
turns the votes' gradient into those of x and W with two batched matrix products (kernels/linear_votes.py).

The launcher is registered as ``capsule_routing::em_votes_forward`` (``triton_op`` + ``wrap_triton``), so
torch.compile traces it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.checks import check_iterations, refuse_second_order
from kernels.em.forward import em_m_step_finalize_kernel
from kernels.em.op import NUM_WARPS, allocate, blocks, child_split, constants, em_routing_backward
from kernels.em.votes_forward import em_votes_partials_kernel
from kernels.linear_votes import check_linear, formed_votes, fused_tile_reason, poses_and_transforms_gradients
from kernels.utils import accumulation_dtype


def unsupported_linear_reason(poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> str | None:
    """Why the fused kernels cannot route these (shape-checked) inputs, or None when they can."""
    if transforms.dtype != poses.dtype:
        return f"poses ({poses.dtype}) and transforms ({transforms.dtype}) differ in dtype"
    _, J, D, _ = transforms.shape
    return fused_tile_reason(J, D, poses.dtype, "EM")


def first_shift(poses: Tensor, transforms: Tensor) -> Tensor:
    """Child 0's votes of every row [N, J, D] in the accumulation dtype: the first iteration's moment shift."""
    acc = accumulation_dtype(poses.dtype)
    return torch.einsum("nk,jdk->njd", poses[:, 0].to(acc), transforms[0].to(acc)).contiguous()


@triton_op("capsule_routing::em_votes_forward", mutates_args=())
def em_votes_forward(
    poses: Tensor,
    transforms: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int,
    final_lambda: float,
    min_var: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """T = `iterations` EM iterations on the votes transforms[i, j] @ poses[n, i].

    poses [N, I, K] (strided), transforms [I, J, D, K] (contiguous, poses' dtype), activations [N, I] (contiguous),
    beta_u/beta_a [J] (compute dtype). Returns what ``em_routing_forward`` returns: (poses [N, J, D], activations
    [N, J], assignments [N, I, J]) in the poses' dtype, then mus, vhats [T, N, J, D], logits, masses [T, N, J] and
    an empty norms (no shared children) for the backward.
    """
    N, I, K = poses.shape
    _, J, D, _ = transforms.shape
    T = iterations
    acc = accumulation_dtype(poses.dtype)
    dev = poses.device
    block_i, block_j, block_d = blocks(I, J, D)
    tiles, NB = child_split(N, I, block_i)
    consts = constants(T, final_lambda, min_var, eps, acc, dev)
    shift = first_shift(poses, transforms)
    mus, vhats = allocate((T, N, J, D), acc, dev), allocate((T, N, J, D), acc, dev)
    logits, masses = allocate((T, N, J), acc, dev), allocate((T, N, J), acc, dev)
    norms = allocate((0,), acc, dev)
    pose, act = allocate((N, J, D), poses.dtype, dev), allocate((N, J), poses.dtype, dev)
    assign = allocate((N, I, J), poses.dtype, dev)
    s0, s1, s2 = allocate((N, NB, J), acc, dev), allocate((N, NB, J, D), acc, dev), allocate((N, NB, J, D), acc, dev)
    for t in range(T):
        first, last = t == 0, t == T - 1
        wrap_triton(em_votes_partials_kernel)[(N, NB)](
            poses, transforms, activations, mus, vhats, logits, consts, shift, s0, s1, s2, assign,
            t, N, I, J, D, K, *poses.stride(), NB, tiles, FIRST=first, WRITE_R=last,
            BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_D=block_d, num_warps=NUM_WARPS)
        # the finalize kernel reads the first iteration's shift as "child 0's votes" of votes [N, 1, J, D]
        wrap_triton(em_m_step_finalize_kernel)[(N,)](
            s0, s1, s2, shift, beta_u, beta_a, consts, mus, vhats, logits, masses, pose, act,
            t, N, 1, J, D, NB, FIRST=first, LAST=last, BLOCK_J=block_j, BLOCK_D=block_d, num_warps=NUM_WARPS)
    return pose, act, assign, mus, vhats, logits, masses, norms


class EMVotesFunction(torch.autograd.Function):
    """(poses [N, I, K], transforms [I, J, D, K], activations [N, I], beta_u [J], beta_a [J] (compute dtype),
    iterations, final_lambda, min_var, eps) -> (poses [N, J, D], activations [N, J], assignments [N, I, J])."""

    @staticmethod
    def forward(ctx, poses, transforms, activations, beta_u, beta_a, iterations, final_lambda, min_var, eps):
        pose, act, assign, mus, vhats, logits, masses, norms = em_votes_forward(
            poses, transforms, activations, beta_u, beta_a, iterations, final_lambda, min_var, eps)
        ctx.save_for_backward(poses, transforms, activations, beta_u, mus, vhats, logits, masses, norms)
        ctx.settings = (final_lambda, min_var, eps)
        return pose, act, assign

    @staticmethod
    def backward(ctx, grad_pose, grad_act, grad_assign):
        refuse_second_order("em", "triton")
        poses, transforms, activations, beta_u, mus, vhats, logits, masses, norms = ctx.saved_tensors
        final_lambda, min_var, eps = ctx.settings
        votes = formed_votes(poses, transforms).contiguous()  # the backward's one copy of the votes
        g_votes, g_act, g_bu, g_ba = em_routing_backward(
            grad_pose.contiguous(), grad_act.contiguous(), grad_assign.contiguous(), votes, activations, beta_u,
            mus, vhats, logits, masses, norms, None, 0, final_lambda, min_var, eps)
        grad_poses, grad_transforms = poses_and_transforms_gradients(
            g_votes, poses, transforms, ctx.needs_input_grad[:2])
        return (
            grad_poses,
            grad_transforms,
            g_act.to(activations.dtype) if ctx.needs_input_grad[2] else None,
            g_bu.sum(0) if ctx.needs_input_grad[3] else None,
            g_ba.sum(0) if ctx.needs_input_grad[4] else None,
            None, None, None, None,
        )


def em_routing_linear(
    poses: Tensor,
    transforms: Tensor,
    activations: Tensor | None,
    beta_u: Tensor,
    beta_a: Tensor,
    *,
    iterations: int = 3,
    final_lambda: float = 0.01,
    min_var: float = 1e-4,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """EM routing of the votes transforms[i, j] @ poses[n, i]: poses [N, I, K], transforms [I, J, D, K] (one
    dtype), activations [N, I] (None: ones), beta_u, beta_a [J] or [1] -> (poses mu [N, J, D], activations a_j
    [N, J], assignments R [N, I, J]) in the poses' dtype; differentiable in poses, transforms, activations, beta_u
    and beta_a.
    """
    check_linear(poses, transforms, activations, "EM")
    reason = unsupported_linear_reason(poses, transforms, activations)
    if reason:
        raise ValueError(f"EM kernel with transforms: {reason}")
    check_iterations(iterations)
    N, I, _ = poses.shape
    J = transforms.shape[1]
    for name, beta in (("beta_u", beta_u), ("beta_a", beta_a)):
        if not isinstance(beta, Tensor) or beta.ndim != 1 or beta.numel() not in (1, J):
            raise ValueError(f"{name} must have shape [J] = [{J}] or [1], got {list(getattr(beta, 'shape', []))}")
    acc = accumulation_dtype(poses.dtype)
    activations = poses.new_ones(N, I) if activations is None else activations.contiguous()
    return EMVotesFunction.apply(
        poses, transforms.contiguous(), activations, beta_u.to(acc).expand(J).contiguous(),
        beta_a.to(acc).expand(J).contiguous(), iterations, float(final_lambda), float(min_var), float(eps))
