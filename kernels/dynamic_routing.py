"""Dynamic routing by agreement (Sabour et al. 2017) as Triton kernels: fused forward, exact backward.

Notation: votes u [B, I, J, D] (any strides), children's activations a [B, I] (or none), T iterations. Iteration
r routes with the logits b_r[i, j] = <u_ij, cum_r[j]>, where cum_r = v_0 + ... + v_{r-1} [B, J, D] is the sum of
the earlier iterations' poses: the paper's running logits, but summed over the tiny poses, so the [B, I, J]
logits are recomputed from the votes and never stored.

Forward, one launch per iteration, each reading the votes once. A program owns one sample and one chunk of its
children, and streams the chunk in sub-blocks of BLOCK_I children (all parents, all pose entries). Per sub-block
it recomputes the logits from cum_r, takes the softmax over parents and accumulates c_ij a_i u_ij. Its partial
sum over the chunk goes to a workspace [B, n_chunks, J, D]; an atomic counter per sample tells the program that
finishes last, which adds the partials in chunk order (exact and deterministic: the order does not depend on
which program came last) and squashes: s_r, v_r and cum_r go to [T, B, J, D] buffers for the backward, and the
last iteration writes the outputs v [B, J, D], |v| [B, J] and its couplings c [B, I, J].

Backward (routing.dynamic._route_backward is the same math in PyTorch). With gs_r the gradient of s_r, the
votes' gradient is sum_r w_r (x) gs_r + sum_{r < T-1} G_{r+1} (x) v_r, where w_r = c_r a and G_r [B, I, J] is
the total gradient of the logits b_r (a sum over the later iterations of softmax-backward terms). gs_{T-1}
comes from the outputs' gradients; gs_{r-1} = squash'(s_{r-1}) (sum_i G_r[i] u_i) is a sum over all children,
so it takes one "reduction pass" over the votes, with the same workspace, counter and ordered sum as the
forward. A final pass then writes the votes' and activations' gradients once. Every pass recomputes what it
needs (c_r, G_r) from the votes and the [T, B, J, D] buffers, so memory stays O(votes) for any T. In the
detach_inner mode only the last iteration is differentiated: one pass.

Cross-program sums: the partials are stored, then a barrier, then one thread's acq_rel atomic on the counter
(PTX: bar.sync; atom.global.gpu.acq_rel.add by thread 0; bar.sync), and the last program reads the partials
with volatile loads: the semaphore pattern of CUTLASS's serial split-K and inductor's cooperative reductions.
The counters are zeroed once per call and count up through its launches, so a launch must run exactly once:
never wrap these kernels in an autotuner that replays them.

Dtypes: float16, bfloat16 and float32 votes are routed in float32, float64 in float64 (the accumulation dtype
is that of the [T, B, J, D] buffers); outputs and gradients come back in the inputs' dtypes.

The launchers are registered with torch.library (`capsule_routing::dynamic_routing_forward` / `_backward`,
`triton_op` + `wrap_triton`) so that torch.compile(fullgraph=True) traces them; `dynamic_routing` is the public
differentiable function.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.utils import block_size, kernel_dtype_ok

# Elements of the [BLOCK_I, BLOCK_J, BLOCK_D] tile of float32 votes a program holds per step (half as many for
# float64), at 4 warps. Found by compiling the kernels for sm_90 with Triton 3.9 and ptxas (no GPU was
# available to time them): the forward needs about 6 registers per tile element a thread, the backward about
# 12, so 2048 (16 a thread) and 1024 (8 a thread) give about 100 registers a thread and no spills, room for
# 4-5 programs per SM. Twice these tiles reach 200-255 registers and spill in the backward.
FORWARD_TILE = 2048
BACKWARD_TILE = 1024
# One child's padded votes (BLOCK_J * BLOCK_D) above this no longer fit a program's registers sensibly.
MAX_PARENT_TILE = 16384
# Programs per streaming multiprocessor the grid aims at: several waves of the 4-5 resident programs, so that
# the last, partly filled wave costs little (the reduction over children then has a few tens of partials).
PROGRAMS_PER_SM = 16
# Under the interpreter programs run one after another on the CPU: aim at few, large programs.
INTERPRETER_PROGRAMS = 8


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _squash_scale(n, eps):
    """f(n) = n / ((1 + n) sqrt(n + eps)) for n = |s|^2, so that squash(s) = f(|s|^2) s."""
    return n / ((1 + n) * tl.sqrt(n + eps))


@triton.jit
def _squash_backward(s, g, eps):
    """grad_s = f grad_v + 2 f'(n) <s, grad_v> s for s, grad_v [BLOCK_J, BLOCK_D] (routing.squash.squash_backward)."""
    n = tl.sum(s * s, axis=1)[:, None]
    inv = 1 / ((1 + n) * tl.sqrt(n + eps))
    f = n * inv
    df = inv * (1 - n / (1 + n) - 0.5 * n / (n + eps))
    return f * g + 2 * df * tl.sum(s * g, axis=1)[:, None] * s


@triton.jit
def _couplings(u, cum, mask_j):
    """softmax over parents of <u_ij, cum_j>: u [BI, BJ, BD], cum [BJ, BD] -> c [BI, BJ] (0 on padded parents)."""
    logits = tl.sum(u * cum[None, :, :], axis=2)
    logits = tl.where(mask_j[None, :], logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _program_tile(n_chunks, J, D, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's sample b and chunk of children, its parent tile (offsets offs_j, offs_d and masks mask_j,
    mask_jd), the offsets jd in a contiguous [J, D] slice and the offset row of sample b in a [B, J, D] buffer."""
    pid = tl.program_id(0)
    b = pid // n_chunks
    chunk = pid % n_chunks
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d[None, :] < D)
    jd = offs_j[:, None] * D + offs_d[None, :]
    row = b.to(tl.int64) * J * D
    return b, chunk, offs_j, offs_d, mask_j, mask_jd, jd, row


@triton.jit
def _dynamic_routing_forward_kernel(
    u_ptr, a_ptr,  # votes [B, I, J, D] (strided), activations [B, I] (strided) or None
    sums_ptr, poses_ptr, cums_ptr,  # s_r, v_r, cum_r [T, B, J, D] (contiguous, accumulation dtype)
    partial_ptr, counter_ptr,  # workspace [B, n_chunks, J, D], arrival counters [B] (int32, zeroed per call)
    v_out_ptr, len_out_ptr, c_out_ptr,  # outputs v [B, J, D], |v| [B, J], c [B, I, J] (contiguous)
    r, BJD, I, J, D,
    stride_ub, stride_ui, stride_uj, stride_ud, stride_ab, stride_ai,
    n_chunks, blocks_per_program, eps,
    HAS_ACT: tl.constexpr, LAST: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Iteration r for one (sample, chunk of children); the last program of each sample finishes the iteration."""
    acc_ty = sums_ptr.dtype.element_ty
    b, chunk, offs_j, offs_d, mask_j, mask_jd, jd, row = _program_tile(n_chunks, J, D, BLOCK_J, BLOCK_D)

    # cum_r = cum_{r-1} + v_{r-1}: both written by the previous launch
    cum = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc_ty)
    if r > 0:
        prev = (r - 1) * BJD + row
        cum = tl.load(cums_ptr + prev + jd, mask=mask_jd, other=0.0)
        cum += tl.load(poses_ptr + prev + jd, mask=mask_jd, other=0.0)

    u_jd = offs_j[None, :, None].to(tl.int64) * stride_uj + offs_d[None, None, :].to(tl.int64) * stride_ud
    u_base = u_ptr + b.to(tl.int64) * stride_ub
    acc = tl.zeros([BLOCK_I, BLOCK_J, BLOCK_D], dtype=acc_ty)  # summed over children once, after the loop
    first_child = chunk * blocks_per_program * BLOCK_I
    for step in range(0, blocks_per_program):
        offs_i = first_child + step * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_i = offs_i < I
        mask = mask_i[:, None, None] & mask_jd[None, :, :]
        u = tl.load(u_base + offs_i[:, None, None].to(tl.int64) * stride_ui + u_jd, mask=mask, other=0.0).to(acc_ty)
        c = _couplings(u, cum, mask_j)
        w = c
        if HAS_ACT:
            a_offs = b.to(tl.int64) * stride_ab + offs_i.to(tl.int64) * stride_ai
            w = c * tl.load(a_ptr + a_offs, mask=mask_i, other=0.0).to(acc_ty)[:, None]
        acc += w[:, :, None] * u
        if LAST:
            c_offs = (b.to(tl.int64) * I + offs_i[:, None]) * J + offs_j[None, :]
            tl.store(c_out_ptr + c_offs, c.to(c_out_ptr.dtype.element_ty), mask=mask_i[:, None] & mask_j[None, :])
    part = partial_ptr + (b.to(tl.int64) * n_chunks + chunk) * J * D + jd
    tl.store(part, tl.sum(acc, axis=0), mask=mask_jd)

    # The counter is not reset between iterations: iteration r's last arrival sees (r + 1) n_chunks - 1.
    # Barrier, then one release/acquire atomic, then barrier: the split-K "last block reduces" pattern (as in
    # torch inductor's cooperative reductions), so every thread's partial store is visible to the last program.
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr + b, 1, sem="acq_rel")
    if arrived == (r + 1) * n_chunks - 1:
        tl.debug_barrier()
        s = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc_ty)
        for k in range(0, n_chunks):  # fixed order: deterministic
            s += tl.load(partial_ptr + (b.to(tl.int64) * n_chunks + k) * J * D + jd, mask=mask_jd, other=0.0,
                         volatile=True)
        v = s * _squash_scale(tl.sum(s * s, axis=1), eps)[:, None]
        here = r * BJD + row + jd
        tl.store(sums_ptr + here, s, mask=mask_jd)
        tl.store(poses_ptr + here, v, mask=mask_jd)
        tl.store(cums_ptr + here, cum, mask=mask_jd)
        if LAST:
            tl.store(v_out_ptr + row + jd, v.to(v_out_ptr.dtype.element_ty), mask=mask_jd)
            length = tl.sqrt(tl.sum(v * v, axis=1))
            tl.store(len_out_ptr + b.to(tl.int64) * J + offs_j, length.to(len_out_ptr.dtype.element_ty), mask=mask_j)


@triton.jit
def _dynamic_routing_backward_kernel(
    u_ptr, a_ptr, grad_c_ptr,  # votes [B, I, J, D], activations [B, I] or None, grad of c [B, I, J] or None
    sums_ptr, poses_ptr, cums_ptr,  # s_r, v_r, cum_r [T, B, J, D] from the forward
    grad_v_ptr, grad_len_ptr,  # gradients of the outputs v [B, J, D] and |v| [B, J] (contiguous, acc dtype)
    gs_ptr,  # gradients of s_r [T, B, J, D]: entry r - 1 written by the reduction pass stop = r
    partial_ptr, counter_ptr,  # workspace [B, n_chunks, J, D], arrival counters [B] (zeroed per call)
    grad_u_ptr, grad_a_ptr,  # final pass outputs: [B, I, J, D] (strided), [B, I] (contiguous)
    stop, gb_floor, pass_index, T, BJD, I, J, D,
    stride_ub, stride_ui, stride_uj, stride_ud, stride_ab, stride_ai,
    stride_cb, stride_ci, stride_cj, stride_gb, stride_gi, stride_gj, stride_gd,
    n_chunks, blocks_per_program, eps,
    HAS_ACT: tl.constexpr, HAS_GRAD_C: tl.constexpr, FINAL: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One backward pass over iterations T-1 .. stop for one (sample, chunk of children).

    Reduction pass (FINAL False): G_stop = sum_{r >= stop} gb_r, and the last program of the sample turns
    sum_i G_stop[i] u_i into gs_{stop-1}. Final pass: writes grad_u and grad_a; softmax-backward terms gb_r are
    added for r >= gb_floor only (the first routed iteration's logits are constants).
    """
    acc_ty = sums_ptr.dtype.element_ty
    b, chunk, offs_j, offs_d, mask_j, mask_jd, jd, row = _program_tile(n_chunks, J, D, BLOCK_J, BLOCK_D)

    # gs_{T-1} from the outputs' gradients: grad_v + grad_|v| v / |v|, through the squash
    top = (T - 1) * BJD + row + jd
    v_top = tl.load(poses_ptr + top, mask=mask_jd, other=0.0)
    length = tl.sqrt(tl.sum(v_top * v_top, axis=1))
    safe = tl.where(length > 0, length, 1.0)
    g_len = tl.load(grad_len_ptr + b.to(tl.int64) * J + offs_j, mask=mask_j, other=0.0)
    g_top = tl.load(grad_v_ptr + row + jd, mask=mask_jd, other=0.0) + (g_len / safe)[:, None] * v_top
    gs_top = _squash_backward(tl.load(sums_ptr + top, mask=mask_jd, other=0.0), g_top, eps)

    u_jd = offs_j[None, :, None].to(tl.int64) * stride_uj + offs_d[None, None, :].to(tl.int64) * stride_ud
    u_base = u_ptr + b.to(tl.int64) * stride_ub
    acc = tl.zeros([BLOCK_I, BLOCK_J, BLOCK_D], dtype=acc_ty)  # reduction pass: sum_i G_stop[i] u_i, summed later
    first_child = chunk * blocks_per_program * BLOCK_I
    for step in range(0, blocks_per_program):
        offs_i = first_child + step * BLOCK_I + tl.arange(0, BLOCK_I)
        offs_i64 = offs_i.to(tl.int64)
        mask_i = offs_i < I
        mask_ij = mask_i[:, None] & mask_j[None, :]
        mask = mask_i[:, None, None] & mask_jd[None, :, :]
        u = tl.load(u_base + offs_i64[:, None, None] * stride_ui + u_jd, mask=mask, other=0.0).to(acc_ty)
        if HAS_ACT:
            a = tl.load(a_ptr + b.to(tl.int64) * stride_ab + offs_i64 * stride_ai, mask=mask_i, other=0.0).to(acc_ty)
        G = tl.zeros([BLOCK_I, BLOCK_J], dtype=acc_ty)  # gradient of the logits of iteration rr + 1
        gu = tl.zeros([BLOCK_I, BLOCK_J, BLOCK_D], dtype=acc_ty)
        ga = tl.zeros([BLOCK_I], dtype=acc_ty)
        for k in range(0, T - stop):
            rr = T - 1 - k
            here = rr * BJD + row + jd
            c = _couplings(u, tl.load(cums_ptr + here, mask=mask_jd, other=0.0), mask_j)
            if rr == T - 1:
                gs = gs_top
            else:
                gs = tl.load(gs_ptr + here, mask=mask_jd, other=0.0)
            gw = tl.sum(u * gs[None, :, :], axis=2)  # <gs_j, u_ij>  [BI, BJ]
            if FINAL:
                w = c
                if HAS_ACT:
                    w = c * a[:, None]
                v = tl.load(poses_ptr + here, mask=mask_jd, other=0.0)
                gu += w[:, :, None] * gs[None, :, :] + G[:, :, None] * v[None, :, :]
                ga += tl.sum(gw * c, axis=1)
            if rr >= gb_floor:
                gc = gw
                if HAS_ACT:
                    gc = gw * a[:, None]
                if HAS_GRAD_C:
                    if rr == T - 1:
                        c_offs = (b.to(tl.int64) * stride_cb + offs_i64[:, None] * stride_ci
                                  + offs_j[None, :].to(tl.int64) * stride_cj)
                        gc += tl.load(grad_c_ptr + c_offs, mask=mask_ij, other=0.0).to(acc_ty)
                G += c * (gc - tl.sum(gc * c, axis=1)[:, None])  # softmax backward over parents
        if FINAL:
            g_offs = (b.to(tl.int64) * stride_gb + offs_i64[:, None, None] * stride_gi
                      + offs_j[None, :, None].to(tl.int64) * stride_gj + offs_d[None, None, :].to(tl.int64) * stride_gd)
            tl.store(grad_u_ptr + g_offs, gu.to(grad_u_ptr.dtype.element_ty), mask=mask)
            tl.store(grad_a_ptr + b.to(tl.int64) * I + offs_i64, ga.to(grad_a_ptr.dtype.element_ty), mask=mask_i)
        else:
            acc += G[:, :, None] * u

    if not FINAL:
        part = partial_ptr + (b.to(tl.int64) * n_chunks + chunk) * J * D + jd
        tl.store(part, tl.sum(acc, axis=0), mask=mask_jd)
        tl.debug_barrier()  # see the forward kernel
        arrived = tl.atomic_add(counter_ptr + b, 1, sem="acq_rel")
        if arrived == (pass_index + 1) * n_chunks - 1:
            tl.debug_barrier()
            gv = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc_ty)
            for kk in range(0, n_chunks):  # fixed order: deterministic
                gv += tl.load(partial_ptr + (b.to(tl.int64) * n_chunks + kk) * J * D + jd, mask=mask_jd,
                              other=0.0, volatile=True)
            below = (stop - 1) * BJD + row + jd
            s = tl.load(sums_ptr + below, mask=mask_jd, other=0.0)
            tl.store(gs_ptr + below, _squash_backward(s, gv, eps), mask=mask_jd)


# ---------------------------------------------------------------------------------------------- launchers


class LaunchConfig(NamedTuple):
    """How the children of one sample are split: sub-blocks of block_i children, blocks_per_program of them
    per program, n_chunks programs per sample; num_warps per program."""

    block_i: int
    blocks_per_program: int
    n_chunks: int
    num_warps: int


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 votes are routed in float64, every other kernel dtype in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def parent_tile(J: int, D: int) -> int:
    """Padded elements of one child's votes: BLOCK_J * BLOCK_D."""
    return block_size(J, minimum=1) * block_size(D, minimum=1)


def unsupported_reason(votes: Tensor, activations: Tensor | None = None) -> str | None:
    """Why the kernels cannot route these (already shape-checked) inputs, or None when they can."""
    for name, t in (("votes", votes), ("activations", activations)):
        if t is not None and not kernel_dtype_ok(t):
            return f"{name} dtype {t.dtype} is not supported (float16, bfloat16, float32 or float64)"
    _, _, J, D = votes.shape
    if parent_tile(J, D) > MAX_PARENT_TILE:
        return (f"J x D = {J} x {D} parents' poses pad to {parent_tile(J, D)} elements per child, more than the "
                f"{MAX_PARENT_TILE} a Triton program holds; use backend='torch'")
    return None


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
        block_i = min(block_size(I, minimum=1), max(1, tile // parent_tile(J, D)))
    if block_i < 1 or block_i & (block_i - 1):
        raise ValueError(f"block_i must be a power of two >= 1 (or 0 for the default), got {block_i}")
    n_blocks = triton.cdiv(I, block_i)
    if blocks_per_program == 0:
        blocks_per_program = triton.cdiv(n_blocks * B, _target_programs(votes.device))
    if blocks_per_program < 1:
        raise ValueError(f"blocks_per_program must be >= 1 (or 0 for the default), got {blocks_per_program}")
    blocks_per_program = min(blocks_per_program, n_blocks)
    num_warps = min(16, max(4, block_size(4 * block_i * parent_tile(J, D) // tile, minimum=1)))
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
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
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
    kernel = wrap_triton(_dynamic_routing_forward_kernel)
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
    kernel = wrap_triton(_dynamic_routing_backward_kernel)
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
