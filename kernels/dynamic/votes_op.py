"""Dynamic routing of a dense capsule layer's votes formed inside the kernel: launcher, torch.library registration,
autograd Function and the public function.

    v, lengths, c = dynamic_routing_linear(poses, transforms, activations, iterations=3, detach_inner=False, eps=1e-8)

poses [B, I, K] (any strides), transforms W [I, J, D, K], activations [B, I] or None (CUDA, or CPU under
TRITON_INTERPRET=1; poses and W of one dtype) -> what ``dynamic_routing(votes, ...)`` returns for the votes
u_ij = W[i, j] @ poses[b, i], in the poses' dtype. The forward kernel (kernels/dynamic/votes_forward.py) forms the
votes tile by tile and never writes them. The backward forms them once in the accumulation dtype, runs the unfused
backward kernel (kernels/dynamic/backward.py) for their gradient and the activations', and turns the votes'
gradient into those of the poses and W with two batched matrix products (kernels/linear_votes.py).

The launcher is registered as ``capsule_routing::dynamic_votes_forward`` (``triton_op`` + ``wrap_triton``), so
torch.compile(fullgraph=True) traces it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.checks import DYNAMIC_DOUBLE_BACKWARD_HINT, check_iterations, refuse_second_order
from kernels.dynamic.op import _target_programs, dynamic_routing_backward
from kernels.dynamic.votes_forward import dynamic_votes_forward_kernel
from kernels.linear_votes import check_linear, formed_votes, fused_tile_reason, poses_and_transforms_gradients
from kernels.utils import accumulation_dtype, block_size, parent_tile_size

# Values of the [BLOCK_B, BLOCK_J, BLOCK_D] votes tile a program forms per child (float32; a quarter as many
# float64), where the parents allow: it also keeps cum_r and the partial sum of each of its samples, tiles of the
# same size. Chosen by compiling the kernel for sm_80 and sm_90 (experiments.kernel_resources).
VOTES_TILE = 1024
# Samples that share each slice of W in a program.
MIN_BLOCK_B = 2
MAX_BLOCK_B = 8
# 32-bit words of the live tiles (votes, cum_r, partial sums) per warp: 48 registers a thread, about half of what
# the programs use. With fewer words per warp (more warps) ptxas held fewer registers a thread and spilled.
WORDS_PER_WARP = 1536


class VotesLaunchConfig(NamedTuple):
    """Samples in groups of block_b; each group's children in n_chunks programs of children_per_program;
    num_warps per program."""

    block_b: int
    children_per_program: int
    n_chunks: int
    n_groups: int
    num_warps: int


def unsupported_linear_reason(poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> str | None:
    """Why the fused kernel cannot route these (shape-checked) inputs, or None when it can."""
    if transforms.dtype != poses.dtype:
        return f"poses ({poses.dtype}) and transforms ({transforms.dtype}) differ in dtype"
    _, J, D, _ = transforms.shape
    return fused_tile_reason(J, D, poses.dtype, "dynamic routing")


def votes_launch_config(B: int, I: int, J: int, D: int, dtype: torch.dtype, device: torch.device, block_b: int = 0,
                        children_per_program: int = 0) -> VotesLaunchConfig:
    """The split for poses [B, I, K] -> votes [B, I, J, D] of `dtype`; 0 picks the default.

    block_b: MIN_BLOCK_B to MAX_BLOCK_B samples (no more than the batch needs), as many as fit VOTES_TILE float32
    values of their votes [BLOCK_J, BLOCK_D] (a quarter as many float64); children_per_program so that the grid has
    about the op's target number of programs (kernels/dynamic/op.py); num_warps grows with the 32-bit words a
    program keeps live.
    """
    words = accumulation_dtype(dtype).itemsize // 4  # 32-bit registers per value
    parents = parent_tile_size(J, D)
    if block_b == 0:
        fit = max(1, VOTES_TILE // words**2 // parents)
        fit = 1 << (fit.bit_length() - 1)  # a power of two
        block_b = min(block_size(B, minimum=MIN_BLOCK_B), MAX_BLOCK_B, max(MIN_BLOCK_B, fit))
    if block_b < 1 or block_b & (block_b - 1):
        raise ValueError(f"block_b must be a power of two >= 1 (or 0 for the default), got {block_b}")
    n_groups = triton.cdiv(B, block_b)
    if children_per_program == 0:
        children_per_program = triton.cdiv(I * n_groups, _target_programs(device))
    if children_per_program < 1:
        raise ValueError(f"children_per_program must be >= 1 (or 0 for the default), got {children_per_program}")
    children_per_program = min(children_per_program, I)
    live = 3 * block_b * parents  # the votes tile, cum_r and the partial sum
    num_warps = min(16, max(4, block_size(triton.cdiv(live * words, WORDS_PER_WARP), minimum=1)))
    return VotesLaunchConfig(block_b, children_per_program, triton.cdiv(I, children_per_program), n_groups,
                             num_warps)


def _check(poses: Tensor, transforms: Tensor, activations: Tensor | None) -> None:
    check_linear(poses, transforms, activations, "dynamic routing")
    reason = unsupported_linear_reason(poses, transforms, activations)
    if reason is not None:
        raise ValueError(f"dynamic routing kernel with transforms: {reason}")


def _activation_strides(activations: Tensor | None) -> tuple[int, int]:
    return (0, 0) if activations is None else (activations.stride(0), activations.stride(1))


@triton_op("capsule_routing::dynamic_votes_forward", mutates_args=())
def dynamic_votes_forward(
    poses: Tensor, transforms: Tensor, activations: Tensor | None, iterations: int, eps: float, block_b: int,
    children_per_program: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Route the votes transforms[i, j] @ poses[b, i] (poses [B, I, K], transforms [I, J, D, K], activations
    [B, I] or None) for `iterations` >= 1 iterations.

    Returns v [B, J, D], |v| [B, J], couplings c [B, I, J] of the last iteration (poses' dtype), and the
    per-iteration s_r, v_r, cum_r [T, B, J, D] (accumulation dtype) that the backward needs. block_b (a power of
    two) and children_per_program split the work as `votes_launch_config` describes (0: its default).
    """
    _check(poses, transforms, activations)
    check_iterations(iterations)
    B, I, K = poses.shape
    _, J, D, _ = transforms.shape
    T = iterations
    acc = accumulation_dtype(poses.dtype)
    dev = poses.device
    config = votes_launch_config(B, I, J, D, poses.dtype, dev, block_b, children_per_program)
    transforms = transforms.contiguous()
    sums, poses_r, cums = (torch.empty(T, B, J, D, device=dev, dtype=acc) for _ in range(3))
    partial = torch.empty(B, config.n_chunks, J, D, device=dev, dtype=acc)
    counter = torch.zeros(config.n_groups, device=dev, dtype=torch.int32)
    v_out = torch.empty(B, J, D, device=dev, dtype=poses.dtype)
    len_out = torch.empty(B, J, device=dev, dtype=poses.dtype)
    c_out = torch.empty(B, I, J, device=dev, dtype=poses.dtype)
    kernel = wrap_triton(dynamic_votes_forward_kernel)
    for r in range(T):
        kernel[(config.n_groups * config.n_chunks,)](
            poses, transforms, activations, sums, poses_r, cums, partial, counter, v_out, len_out, c_out,
            r, B * J * D, B, I, J, D, K, *poses.stride(), *_activation_strides(activations),
            config.n_chunks, config.children_per_program, eps,
            HAS_ACT=activations is not None, LAST=r == T - 1,
            BLOCK_B=config.block_b, BLOCK_J=block_size(J, minimum=1), BLOCK_D=block_size(D, minimum=1),
            num_warps=config.num_warps,
        )
    return v_out, len_out, c_out, sums, poses_r, cums


class DynamicVotesFunction(torch.autograd.Function):
    """(poses [B, I, K], transforms [I, J, D, K], activations [B, I] or None) -> (v [B, J, D], |v| [B, J],
    c [B, I, J])."""

    @staticmethod
    def forward(ctx, poses, transforms, activations, iterations, detach_inner, eps, block_b, children_per_program):
        v, length, c, sums, poses_r, cums = dynamic_votes_forward(
            poses, transforms, activations, iterations, eps, block_b, children_per_program)
        ctx.save_for_backward(poses, transforms, activations, sums, poses_r, cums)
        ctx.settings = (detach_inner, eps)
        if not torch.compiler.is_compiling():
            ctx.set_materialize_grads(False)  # eager: skip reading a zero gradient of unused couplings
        return v, length, c

    @staticmethod
    def backward(ctx, grad_v, grad_length, grad_c):
        refuse_second_order("dynamic", "triton", DYNAMIC_DOUBLE_BACKWARD_HINT)
        poses, transforms, activations, sums, poses_r, cums = ctx.saved_tensors
        detach_inner, eps = ctx.settings
        T, B, J, D = sums.shape
        gv = sums.new_zeros(B, J, D) if grad_v is None else grad_v.to(sums.dtype).contiguous()
        gl = sums.new_zeros(B, J) if grad_length is None else grad_length.to(sums.dtype).contiguous()
        votes = formed_votes(poses, transforms)  # the backward's one copy of the votes, accumulation dtype
        grad_votes, grad_act = dynamic_routing_backward(
            votes, activations, sums, poses_r, cums, gv, gl, grad_c, detach_inner, eps, 0, 0)
        grad_poses, grad_transforms = poses_and_transforms_gradients(
            grad_votes, poses, transforms, ctx.needs_input_grad[:2])
        return (grad_poses, grad_transforms, grad_act if activations is not None else None,
                None, None, None, None, None)


def dynamic_routing_linear(
    poses: Tensor,
    transforms: Tensor,
    activations: Tensor | None,
    iterations: int,
    detach_inner: bool,
    eps: float,
    *,
    block_b: int = 0,
    children_per_program: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable dynamic routing of the votes transforms[i, j] @ poses[b, i]: poses [B, I, K], transforms
    [I, J, D, K] (one dtype), activations [B, I] or None -> (v [B, J, D], |v| [B, J], c [B, I, J]) in the poses'
    dtype, with gradients into poses, transforms and activations.

    detach_inner as in ``dynamic_routing``. block_b and children_per_program, when not 0, override
    `votes_launch_config`'s choice (tests use them to force several groups and chunks).
    """
    _check(poses, transforms, activations)
    return DynamicVotesFunction.apply(poses, transforms, activations, iterations, detach_inner, eps, block_b,
                                      children_per_program)
