"""EM routing (Hinton et al. 2018) on the Triton kernels: the host side. Launchers (``em_routing_forward``,
``em_routing_backward``), their ``torch.library`` registration (``capsule_routing::em_routing_forward`` / ``_backward``,
both ``triton_op``s so ``torch.compile`` sees the kernels), the autograd Function and the public op.

    poses, activations, assignments = em_routing(votes, activations, beta_u, beta_a, iterations=3)

votes [N, I, J, D], activations [N, I] -> poses [N, J, D], activations [N, J], assignments [N, I, J]. The math
and its numerics are in kernels/em/forward.py (fused E/M-step passes) and kernels/em/backward.py (the exact
backward). The oracle is routing.em's ``EMRouting.route``.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.checks import check_child_index, check_iterations, refuse_second_order
from kernels.em.backward import em_backward_parents_kernel, em_backward_stage_kernel, em_backward_votes_kernel
from kernels.em.forward import em_m_step_finalize_kernel, em_m_step_partials_kernel, em_row_normaliser_kernel
from kernels.em.schedule import inverse_temperatures
from kernels.utils import accumulation_dtype, block_size, kernel_dtype_ok, parent_tile_reason

# Elements of one [BLOCK_I, BLOCK_J, BLOCK_D] votes tile. Not tuned on a GPU (none was available when this was
# written): 2048 fp32 values keep about five live tiles within the registers of 4 warps.
TILE_ELEMENTS = 2048
NUM_WARPS = 4
# Programs per launch the child split aims for (a few per SM on an H100); also untuned.
TARGET_PROGRAMS = 2048


# ---------------------------------------------------------------------------------------------- launchers


def allocate(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the EM kernels write comes from here (tests replace it to fill buffers with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def blocks(I: int, J: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_I, BLOCK_J, BLOCK_D) for votes [N, I, J, D]: J and D padded to powers of two, BLOCK_I fills the tile."""
    reason = parent_tile_reason(J, D, "EM")
    if reason:
        raise ValueError(reason)
    block_j, block_d = block_size(J, minimum=1), block_size(D, minimum=1)
    block_i = min(block_size(I, minimum=1), max(1, TILE_ELEMENTS // (block_j * block_d)))
    return block_i, block_j, block_d


def child_split(N: int, I: int, block_i: int) -> tuple[int, int]:
    """(tiles per program, programs per row NB): few partials when there are many rows, many programs when few."""
    tiles_per_row = triton.cdiv(I, block_i)
    tiles = max(1, min(tiles_per_row, (N * tiles_per_row) // TARGET_PROGRAMS))
    return tiles, triton.cdiv(tiles_per_row, tiles)


def constants(iterations: int, final_lambda: float, min_var: float, eps: float, dtype, device) -> Tensor:
    """[min_var, eps, lambda_0 .. lambda_{T-1}] in the compute dtype (a tensor keeps float64 exact)."""
    return torch.tensor([min_var, eps, *inverse_temperatures(iterations, final_lambda)], dtype=dtype, device=device)


def shared_child_logsumexp(lse: Tensor, child_index: Tensor, groups: int) -> Tensor:
    """Per-(row, child) logsumexp over parents [N, I] -> logsumexp over every (window, parent) pair of the
    sample's shared child child_index[n % P, i], gathered back to [N, I]."""
    N, I = lse.shape
    B = N // child_index.shape[0]
    per_row = lse.reshape(B, -1)
    flat = child_index.reshape(1, -1).expand(B, -1)
    peak = per_row.new_full((B, groups), float("-inf")).scatter_reduce(1, flat, per_row, "amax", include_self=True)
    total = per_row.new_zeros(B, groups).scatter_add(1, flat, torch.exp(per_row - peak.gather(1, flat)))
    return (peak + torch.log(total)).gather(1, flat).reshape(N, I).contiguous()


def shared_child_sum(q: Tensor, child_index: Tensor, groups: int) -> Tensor:
    """q [N, I] -> for each (row, child), the sum of q over every (row, child) of the sample that is the same
    shared child child_index[n % P, i], [N, I]."""
    N, I = q.shape
    B = N // child_index.shape[0]
    flat = child_index.reshape(1, -1).expand(B, -1)
    total = q.new_zeros(B, groups).scatter_add(1, flat, q.reshape(B, -1))
    return total.gather(1, flat).reshape(N, I).contiguous()


@triton_op("capsule_routing::em_routing_forward", mutates_args=())
def em_routing_forward(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    child_index: Tensor | None,
    groups: int,
    iterations: int,
    final_lambda: float,
    min_var: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run T = `iterations` fused EM iterations.

    votes [N, I, J, D] (float16/bfloat16/float32/float64, contiguous), activations [N, I], beta_u/beta_a [J]
    (compute dtype), child_index [P, I] int64 with `groups` > max(child_index) or None.
    Returns (poses [N, J, D], activations [N, J], assignments [N, I, J]) in the votes' dtype, then the saved
    statistics for the backward: mus, vhats [T, N, J, D] (vhat = var - min_var), logits, masses [T, N, J],
    norms [T-1, N, I] (the shared-child log normalisers; [0] without child_index).
    """
    N, I, J, D = votes.shape
    T = iterations
    acc = accumulation_dtype(votes.dtype)
    dev = votes.device
    block_i, block_j, block_d = blocks(I, J, D)
    tiles, NB = child_split(N, I, block_i)
    shared = child_index is not None
    consts = constants(T, final_lambda, min_var, eps, acc, dev)
    mus, vhats = allocate((T, N, J, D), acc, dev), allocate((T, N, J, D), acc, dev)
    logits, masses = allocate((T, N, J), acc, dev), allocate((T, N, J), acc, dev)
    norms = allocate((T - 1, N, I) if shared else (0,), acc, dev)
    pose, act = allocate((N, J, D), votes.dtype, dev), allocate((N, J), votes.dtype, dev)
    assign = allocate((N, I, J), votes.dtype, dev)
    s0, s1, s2 = allocate((N, NB, J), acc, dev), allocate((N, NB, J, D), acc, dev), allocate((N, NB, J, D), acc, dev)
    blocks_kw = dict(BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_D=block_d)
    for t in range(T):
        first, last = t == 0, t == T - 1
        if shared and not first:
            lse = allocate((N, I), acc, dev)
            wrap_triton(em_row_normaliser_kernel)[(N, triton.cdiv(I, block_i))](
                votes, mus, vhats, logits, consts, lse, t - 1, N, I, J, D, **blocks_kw, num_warps=NUM_WARPS)
            norms[t - 1].copy_(shared_child_logsumexp(lse, child_index, groups))
        wrap_triton(em_m_step_partials_kernel)[(N, NB)](
            votes, activations, mus, vhats, logits, consts, norms, s0, s1, s2, assign,
            t, N, I, J, D, NB, tiles, FIRST=first, SHARED=shared and not first, WRITE_R=last, **blocks_kw,
            num_warps=NUM_WARPS)
        wrap_triton(em_m_step_finalize_kernel)[(N,)](
            s0, s1, s2, votes, beta_u, beta_a, consts, mus, vhats, logits, masses, pose, act,
            t, N, I, J, D, NB, FIRST=first, LAST=last, BLOCK_J=block_j, BLOCK_D=block_d, num_warps=NUM_WARPS)
    return pose, act, assign, mus, vhats, logits, masses, norms


@triton_op("capsule_routing::em_routing_backward", mutates_args=())
def em_routing_backward(
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
    child_index: Tensor | None,
    groups: int,
    final_lambda: float,
    min_var: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``em_routing_forward``'s (poses [N, J, D], activations [N, J], assignments [N, I, J]) with upstream
    gradients grad_pose/grad_act/grad_assign (any float dtype), from its saved statistics.

    Returns (g_votes [N, I, J, D] in the votes' dtype, g_activations [N, I], and the per-row beta gradients
    g_beta_u, g_beta_a [N, J], all three in the compute dtype).
    """
    N, I, J, D = votes.shape
    T = mus.shape[0]
    acc, dev = mus.dtype, votes.device
    block_i, block_j, block_d = blocks(I, J, D)
    tiles, NB = child_split(N, I, block_i)
    shared = child_index is not None
    consts = constants(T, final_lambda, min_var, eps, acc, dev)
    alloc = allocate
    gmus, gvars, gmass = alloc((T, N, J, D), acc, dev), alloc((T, N, J, D), acc, dev), alloc((T, N, J), acc, dev)
    gbu, gba, gact = alloc((N, J), acc, dev), alloc((N, J), acc, dev), alloc((N, I), acc, dev)
    coeff, gl = alloc((T - 1, N, I, J), acc, dev), alloc((T - 1, N, I, J), acc, dev)
    g0, g1, g2 = alloc((N, NB, J), acc, dev), alloc((N, NB, J, D), acc, dev), alloc((N, NB, J, D), acc, dev)
    q = alloc((N, I), acc, dev)
    tile_kw = dict(BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_D=block_d, num_warps=NUM_WARPS)
    parent_kw = dict(BLOCK_J=block_j, BLOCK_D=block_d, num_warps=NUM_WARPS)
    wrap_triton(em_backward_parents_kernel)[(N,)](
        g0, g1, g2, mus, vhats, logits, masses, beta_u, consts, grad_pose, grad_act, gmus, gvars, gmass,
        gbu, gba, T - 1, N, J, D, NB, HAS_E=False, LAST=True, **parent_kw)
    for t in range(T - 1, 0, -1):
        stage_args = (votes, activations, mus, vhats, logits, masses, norms, gmus, gvars, gmass, consts,
                      grad_assign, q, coeff, gl, gact, g0, g1, g2, t, N, I, J, D, NB, tiles)
        last = t == T - 1
        if shared:
            wrap_triton(em_backward_stage_kernel)[(N, NB)](
                *stage_args, SHARED=True, Q_ONLY=True, LAST=last, **tile_kw)
            q = shared_child_sum(q, child_index, groups)
        wrap_triton(em_backward_stage_kernel)[(N, NB)](
            *stage_args[:12], q, *stage_args[13:], SHARED=shared, Q_ONLY=False, LAST=last, **tile_kw)
        wrap_triton(em_backward_parents_kernel)[(N,)](
            g0, g1, g2, mus, vhats, logits, masses, beta_u, consts, grad_pose, grad_act, gmus, gvars, gmass,
            gbu, gba, t - 1, N, J, D, NB, HAS_E=True, LAST=False, **parent_kw)
    gvotes = alloc((N, I, J, D), votes.dtype, dev)
    wrap_triton(em_backward_votes_kernel)[(N, triton.cdiv(I, block_i))](
        votes, activations, mus, vhats, masses, gmus, gvars, gmass, consts, coeff, gl, gvotes, gact,
        T, N, I, J, D, ACCUMULATE=T > 1, **tile_kw)
    return gvotes, gact, gbu, gba


class EMRoutingFunction(torch.autograd.Function):
    """(votes [N, I, J, D], activations [N, I], beta_u [J], beta_a [J] (compute dtype), child_index, groups,
    iterations, final_lambda, min_var, eps) -> (poses [N, J, D], activations [N, J], assignments [N, I, J])."""

    @staticmethod
    def forward(ctx, votes, activations, beta_u, beta_a, child_index, groups, iterations, final_lambda, min_var,
                eps):
        pose, act, assign, mus, vhats, logits, masses, norms = em_routing_forward(
            votes, activations, beta_u, beta_a, child_index, groups, iterations, final_lambda, min_var, eps)
        ctx.save_for_backward(votes, activations, beta_u, mus, vhats, logits, masses, norms, child_index)
        ctx.settings = (groups, final_lambda, min_var, eps)
        return pose, act, assign

    @staticmethod
    def backward(ctx, grad_pose, grad_act, grad_assign):
        refuse_second_order("em", "triton")
        votes, activations, beta_u, mus, vhats, logits, masses, norms, child_index = ctx.saved_tensors
        groups, final_lambda, min_var, eps = ctx.settings
        g_votes, g_act, g_bu, g_ba = em_routing_backward(
            grad_pose.contiguous(), grad_act.contiguous(), grad_assign.contiguous(), votes, activations, beta_u,
            mus, vhats, logits, masses, norms, child_index, groups, final_lambda, min_var, eps)
        return (
            g_votes if ctx.needs_input_grad[0] else None,
            g_act.to(activations.dtype) if ctx.needs_input_grad[1] else None,
            g_bu.sum(0) if ctx.needs_input_grad[2] else None,
            g_ba.sum(0) if ctx.needs_input_grad[3] else None,
            None, None, None, None, None, None,
        )


def unsupported_reason(votes: Tensor, activations: Tensor | None = None) -> str | None:
    """Why these (already validated) inputs are outside what the kernels handle, or None."""
    for name, t in (("votes", votes), ("activations", activations)):
        if t is not None and not kernel_dtype_ok(t):
            return f"the EM Triton kernels read float16/bfloat16/float32/float64 {name}, got {t.dtype}"
    J, D = votes.shape[2], votes.shape[3]
    return parent_tile_reason(J, D, "EM")


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
    reason = unsupported_reason(votes, activations)
    if reason:
        raise ValueError(reason)
    check_iterations(iterations)
    for name, beta in (("beta_u", beta_u), ("beta_a", beta_a)):
        if beta.ndim != 1 or beta.numel() not in (1, J):
            raise ValueError(f"{name} must have shape [J] = [{J}] or [1], got {list(beta.shape)}")
    acc = accumulation_dtype(votes.dtype)
    groups = 0
    if child_index is not None:
        child_index = check_child_index(child_index, N, I).to(votes.device).contiguous()
        groups = int(child_index.max()) + 1
    activations = votes.new_ones(N, I) if activations is None else activations.contiguous()
    return EMRoutingFunction.apply(
        votes.contiguous(), activations, beta_u.to(acc).expand(J).contiguous(),
        beta_a.to(acc).expand(J).contiguous(), child_index, groups, iterations, float(final_lambda),
        float(min_var), float(eps))
