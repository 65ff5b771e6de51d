"""Dynamic routing's host side: launchers, torch.library registration, autograd Function, public function.

    v, lengths, c = dynamic_routing(votes, activations, iterations=3, detach_inner=False, eps=1e-8)

votes [B, I, J, D] (any strides; CUDA, or CPU under TRITON_INTERPRET=1), activations [B, I] or None -> poses
v [B, J, D], lengths |v| [B, J], couplings c [B, I, J] of the last iteration, in the votes' dtype. The kernels and
their math are in kernels/dynamic/forward.py and backward.py.

The launchers are registered with torch.library (`capsule_routing::dynamic_routing_forward` / `_backward`,
`triton_op` + `wrap_triton`) so that torch.compile(fullgraph=True) traces them; `dynamic_routing` is the public
differentiable function.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import triton
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.checks import DYNAMIC_DOUBLE_BACKWARD_HINT, check_iterations, refuse_second_order
from kernels.dynamic.backward import dynamic_routing_backward_kernel
from kernels.dynamic.forward import dynamic_routing_forward_kernel
from kernels.utils import accumulation_dtype, block_size, kernel_dtype_ok, parent_tile_reason, parent_tile_size

# Elements of the [BLOCK_I, BLOCK_J, BLOCK_D] tile of float32 votes a program holds per step (half as many for
# float64), at 4 warps. Found by compiling the kernels for sm_90 with Triton 3.9 and ptxas (no GPU): both give
# about 100 registers a thread, no spills and room for 4-5 programs per SM; twice these tiles spill in the backward.
FORWARD_TILE = 2048
BACKWARD_TILE = 1024
# Programs per streaming multiprocessor the grid aims at: several waves of the 4-5 resident programs, so that
# the last, partly filled wave costs little (the reduction over children then has a few tens of partials).
PROGRAMS_PER_SM = 16
# Under the interpreter programs run one after another on the CPU: aim at few, large programs.
INTERPRETER_PROGRAMS = 8


# ---------------------------------------------------------------------------------------------- launchers


class LaunchConfig(NamedTuple):
    """How the children of one sample are split: sub-blocks of block_i children, blocks_per_program of them
    per program, n_chunks programs per sample; num_warps per program."""

    block_i: int
    blocks_per_program: int
    n_chunks: int
    num_warps: int


def unsupported_reason(votes: Tensor, activations: Tensor | None = None) -> str | None:
    """Why the kernels cannot route these (already shape-checked) inputs, or None when they can."""
    for name, t in (("votes", votes), ("activations", activations)):
        if t is not None and not kernel_dtype_ok(t):
            return f"{name} dtype {t.dtype} is not supported (float16, bfloat16, float32 or float64)"
    _, _, J, D = votes.shape
    return parent_tile_reason(J, D, "dynamic routing")


@cache
def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_PROGRAMS


def launch_config(votes: Tensor, tile: int, block_i: int = 0, blocks_per_program: int = 0) -> LaunchConfig:
    """Split each sample's I children into n_chunks programs of blocks_per_program sub-blocks of block_i.

    tile: FORWARD_TILE or BACKWARD_TILE. 0 picks the default: block_i so that a sub-block holds about `tile`
    float32 votes (tile / 2 float64 ones); blocks_per_program so that the grid has about PROGRAMS_PER_SM
    programs per SM. A child too large for the tile at 4 warps gets more warps (up to 16).
    """
    B, I, J, D = votes.shape
    tile = tile * 4 // accumulation_dtype(votes.dtype).itemsize
    if block_i == 0:
        block_i = min(block_size(I, minimum=1), max(1, tile // parent_tile_size(J, D)))
    if block_i < 1 or block_i & (block_i - 1):
        raise ValueError(f"block_i must be a power of two >= 1 (or 0 for the default), got {block_i}")
    n_blocks = triton.cdiv(I, block_i)
    if blocks_per_program == 0:
        blocks_per_program = triton.cdiv(n_blocks * B, _target_programs(votes.device))
    if blocks_per_program < 1:
        raise ValueError(f"blocks_per_program must be >= 1 (or 0 for the default), got {blocks_per_program}")
    blocks_per_program = min(blocks_per_program, n_blocks)
    num_warps = min(16, max(4, block_size(4 * block_i * parent_tile_size(J, D) // tile, minimum=1)))
    return LaunchConfig(block_i, blocks_per_program, triton.cdiv(n_blocks, blocks_per_program), num_warps)


def _check(votes: Tensor, activations: Tensor | None) -> None:
    if votes.ndim != 4:
        raise ValueError(f"dynamic routing kernel: votes must be [B, I, J, D], got shape {tuple(votes.shape)}")
    if activations is not None and tuple(activations.shape) != tuple(votes.shape[:2]):
        raise ValueError(f"dynamic routing kernel: activations must be [B, I] = {list(votes.shape[:2])}, "
                         f"got {list(activations.shape)}")
    reason = unsupported_reason(votes, activations)
    if reason is not None:
        raise ValueError(f"dynamic routing kernel: {reason}")


def _activation_strides(activations: Tensor | None) -> tuple[int, int]:
    return (0, 0) if activations is None else (activations.stride(0), activations.stride(1))


@triton_op("capsule_routing::dynamic_routing_forward", mutates_args=())
def dynamic_routing_forward(
    votes: Tensor, activations: Tensor | None, iterations: int, eps: float, block_i: int, blocks_per_program: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Route votes [B, I, J, D] (activations [B, I] or None) for `iterations` >= 1 iterations.

    Returns v [B, J, D], |v| [B, J], couplings c [B, I, J] of the last iteration (votes' dtype), and the
    per-iteration s_r, v_r, cum_r [T, B, J, D] (accumulation dtype) that the backward needs.
    block_i (a power of two) and blocks_per_program split the children as `launch_config` describes (0: its
    default choice).
    """
    _check(votes, activations)
    check_iterations(iterations)
    B, I, J, D = votes.shape
    T = iterations
    acc = accumulation_dtype(votes.dtype)
    block_i, blocks_per_program, n_chunks, num_warps = launch_config(votes, FORWARD_TILE, block_i, blocks_per_program)
    sums, poses, cums = (torch.empty(T, B, J, D, device=votes.device, dtype=acc) for _ in range(3))
    partial = torch.empty(B, n_chunks, J, D, device=votes.device, dtype=acc)
    counter = torch.zeros(B, device=votes.device, dtype=torch.int32)
    v_out = torch.empty(B, J, D, device=votes.device, dtype=votes.dtype)
    len_out = torch.empty(B, J, device=votes.device, dtype=votes.dtype)
    c_out = torch.empty(B, I, J, device=votes.device, dtype=votes.dtype)
    kernel = wrap_triton(dynamic_routing_forward_kernel)
    for r in range(T):
        kernel[(B * n_chunks,)](
            votes, activations, sums, poses, cums, partial, counter, v_out, len_out, c_out,
            r, B * J * D, I, J, D, *votes.stride(), *_activation_strides(activations),
            n_chunks, blocks_per_program, eps,
            HAS_ACT=activations is not None, LAST=r == T - 1,
            BLOCK_I=block_i, BLOCK_J=block_size(J, minimum=1), BLOCK_D=block_size(D, minimum=1),
            num_warps=num_warps,
        )
    return v_out, len_out, c_out, sums, poses, cums


@triton_op("capsule_routing::dynamic_routing_backward", mutates_args=())
def dynamic_routing_backward(
    votes: Tensor,
    activations: Tensor | None,
    sums: Tensor,
    poses: Tensor,
    cums: Tensor,
    grad_v: Tensor,
    grad_length: Tensor,
    grad_c: Tensor | None,
    detach_inner: bool,
    eps: float,
    block_i: int,
    blocks_per_program: int,
) -> tuple[Tensor, Tensor]:
    """Gradients of the routing into votes [B, I, J, D] (votes' dtype and layout) and activations [B, I].

    sums, poses, cums [T, B, J, D] come from `dynamic_routing_forward`; grad_v [B, J, D] and grad_length [B, J]
    are the outputs' gradients (contiguous, accumulation dtype), grad_c [B, I, J] that of the couplings or None.
    The activations' gradient has the activations' dtype (the votes' when there are none: it is then the
    gradient with respect to all-ones activations).
    """
    _check(votes, activations)
    T, B, J, D = sums.shape
    I = votes.shape[1]
    block_i, blocks_per_program, n_chunks, num_warps = launch_config(votes, BACKWARD_TILE, block_i, blocks_per_program)
    acc = sums.dtype
    gs = torch.empty(T, B, J, D, device=votes.device, dtype=acc)
    partial = torch.empty(B, n_chunks, J, D, device=votes.device, dtype=acc)
    counter = torch.zeros(B, device=votes.device, dtype=torch.int32)
    grad_u = torch.empty_like(votes)
    grad_a = torch.empty(B, I, device=votes.device, dtype=votes.dtype if activations is None else activations.dtype)
    first = T - 1 if detach_inner else 0  # earliest iteration that is differentiated
    c_strides = (0, 0, 0) if grad_c is None else grad_c.stride()
    kernel = wrap_triton(dynamic_routing_backward_kernel)
    for pass_index, stop in enumerate([*range(T - 1, first, -1), first]):
        final = stop == first
        kernel[(B * n_chunks,)](
            votes, activations, grad_c, sums, poses, cums, grad_v, grad_length, gs, partial, counter,
            grad_u, grad_a,
            stop, stop + 1 if final else stop, pass_index, T, B * J * D, I, J, D,
            *votes.stride(), *_activation_strides(activations), *c_strides, *grad_u.stride(),
            n_chunks, blocks_per_program, eps,
            HAS_ACT=activations is not None, HAS_GRAD_C=grad_c is not None, FINAL=final,
            BLOCK_I=block_i, BLOCK_J=block_size(J, minimum=1), BLOCK_D=block_size(D, minimum=1),
            num_warps=num_warps,
        )
    return grad_u, grad_a


# ---------------------------------------------------------------------------------------------- autograd


class DynamicRoutingFunction(torch.autograd.Function):
    """(votes [B, I, J, D], activations [B, I] or None) -> (v [B, J, D], |v| [B, J], c [B, I, J])."""

    @staticmethod
    def forward(ctx, votes, activations, iterations, detach_inner, eps, block_i, blocks_per_program):
        v, length, c, sums, poses, cums = dynamic_routing_forward(
            votes, activations, iterations, eps, block_i, blocks_per_program)
        ctx.save_for_backward(votes, activations, sums, poses, cums)
        ctx.settings = (detach_inner, eps, block_i, blocks_per_program)
        if not torch.compiler.is_compiling():
            ctx.set_materialize_grads(False)  # eager: skip reading a zero gradient of unused couplings
        return v, length, c

    @staticmethod
    def backward(ctx, grad_v, grad_length, grad_c):
        refuse_second_order("dynamic", "triton", DYNAMIC_DOUBLE_BACKWARD_HINT)
        votes, activations, sums, poses, cums = ctx.saved_tensors
        detach_inner, eps, block_i, blocks_per_program = ctx.settings
        T, B, J, D = sums.shape
        gv = sums.new_zeros(B, J, D) if grad_v is None else grad_v.to(sums.dtype).contiguous()
        gl = sums.new_zeros(B, J) if grad_length is None else grad_length.to(sums.dtype).contiguous()
        grad_votes, grad_act = dynamic_routing_backward(
            votes, activations, sums, poses, cums, gv, gl, grad_c, detach_inner, eps, block_i, blocks_per_program)
        return grad_votes, (grad_act if activations is not None else None), None, None, None, None, None


def dynamic_routing(
    votes: Tensor,
    activations: Tensor | None,
    iterations: int,
    detach_inner: bool,
    eps: float,
    *,
    block_i: int = 0,
    blocks_per_program: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable dynamic routing: votes [B, I, J, D] (CUDA, or CPU under TRITON_INTERPRET=1), activations
    [B, I] or None -> (poses v [B, J, D], lengths |v| [B, J], couplings c [B, I, J]), in the votes' dtype.

    detach_inner: differentiate the last iteration only (the earlier ones' logits are constants). block_i and
    blocks_per_program, when not 0, override `launch_config`'s choice (tests use them to force several programs
    per sample). The launch configuration is chosen inside the registered ops, which Dynamo treats as opaque.
    """
    _check(votes, activations)
    return DynamicRoutingFunction.apply(votes, activations, iterations, detach_inner, eps, block_i, blocks_per_program)
