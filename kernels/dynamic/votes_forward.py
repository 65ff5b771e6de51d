"""Dynamic routing forward kernel for a dense capsule layer: the votes are formed inside the kernel.

``router(poses, activations, transforms=W)``: the votes u_ij = W[i, j] @ x[b, i] (W [I, J, D, K], poses x
[B, I, K]) never go to memory. A program owns a group of BLOCK_B samples and one chunk of their children; per
child it forms the votes tile [BLOCK_B, BLOCK_J, BLOCK_D] from one [BLOCK_J, BLOCK_D] slice of W per k, used for
all BLOCK_B samples (kernels/linear_votes.py; W is shared by the whole batch, so the other groups' programs find
its tiles in the cache). The rest is the unfused kernel's iteration (kernels/dynamic/forward.py): logits from
cum_r, softmax over parents, c_ij a_i u_ij summed over the chunk into a workspace [B, n_chunks, J, D], and the last
program of a group to arrive (one counter per group of samples, counting up through the iterations) adds each
sample's partials in chunk order and squashes, one sample at a time. It writes the same [T, B, J, D] buffers as the
unfused kernel, whose backward (kernels/dynamic/votes_op.py) therefore applies.
Notation and the cross-program sum: kernels/dynamic/__init__.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.dynamic.tiles import squash, vector_length
from kernels.linear_votes import sample_votes


@triton.jit
def _softmax_reciprocal(total):
    """1 / total for a softmax's denominator (1 <= total <= J). In float64 from a float32 estimate and two Newton
    steps (each doubles the correct bits: 24 -> 48 -> 96), because ptxas compiles a float64 division to a call
    whose register saves inside the loop over children counted as spills."""
    if total.dtype == tl.float64:
        r = (1.0 / total.to(tl.float32)).to(tl.float64)
        r = r * (2.0 - total * r)
        return r * (2.0 - total * r)
    return 1.0 / total


@triton.jit
def dynamic_votes_forward_kernel(
    x_ptr, w_ptr, a_ptr,  # poses [B, I, K] (strided), transforms [I, J, D, K] (contiguous), activations or None
    sums_ptr, poses_ptr, cums_ptr,  # s_r, v_r, cum_r [T, B, J, D] (contiguous, accumulation dtype)
    partial_ptr, counter_ptr,  # workspace [B, n_chunks, J, D], arrival counters [n_groups] (int32, zeroed per call)
    v_out_ptr, len_out_ptr, c_out_ptr,  # outputs v [B, J, D], |v| [B, J], c [B, I, J] (contiguous)
    r, BJD, B, I, J, D, K,
    stride_xb, stride_xi, stride_xk, stride_ab, stride_ai,
    n_chunks, children_per_program, eps,
    HAS_ACT: tl.constexpr, LAST: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Iteration r for one (group of samples, chunk of children); the group's last program finishes it."""
    acc_ty = sums_ptr.dtype.element_ty
    pid = tl.program_id(0)
    group = pid // n_chunks
    chunk = pid % n_chunks
    offs_b = group * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d[None, :] < D)
    jd = offs_j[:, None] * D + offs_d[None, :]
    rows = offs_b[:, None, None].to(tl.int64) * J * D + jd[None, :, :]  # [BB, BJ, BD] in a [B, J, D] buffer
    mask_bjd = mask_b[:, None, None] & mask_jd[None, :, :]

    # cum_r = cum_{r-1} + v_{r-1}: both written by the previous launch
    cum = tl.zeros([BLOCK_B, BLOCK_J, BLOCK_D], dtype=acc_ty)
    if r > 0:
        prev = (r - 1) * BJD + rows
        cum = tl.load(cums_ptr + prev, mask=mask_bjd, other=0.0)
        cum += tl.load(poses_ptr + prev, mask=mask_bjd, other=0.0)

    acc = tl.zeros([BLOCK_B, BLOCK_J, BLOCK_D], dtype=acc_ty)
    a_rows = offs_b.to(tl.int64) * stride_ab  # per sample, out of the loop over children
    c_rows = offs_b[:, None].to(tl.int64) * I * J + offs_j[None, :]
    mask_bj = mask_b[:, None] & mask_j[None, :]
    first_child = chunk * children_per_program
    for step in range(0, tl.minimum(children_per_program, I - first_child)):
        i = first_child + step
        u = sample_votes(x_ptr, w_ptr, offs_b, mask_b, i, mask_jd, J, D, K, stride_xb, stride_xi, stride_xk,
                         BLOCK_B, BLOCK_J, BLOCK_D, acc_ty)
        logits = tl.sum(u * cum, axis=2)  # [BB, BJ]
        logits = tl.where(mask_j[None, :], logits, float("-inf"))
        e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        c = e * _softmax_reciprocal(tl.sum(e, axis=1))[:, None]  # softmax over parents
        weights = c
        if HAS_ACT:
            a = tl.load(a_ptr + a_rows + i.to(tl.int64) * stride_ai, mask=mask_b, other=0.0).to(acc_ty)
            weights = c * a[:, None]
        acc += weights[:, :, None] * u
        if LAST:
            tl.store(c_out_ptr + c_rows + i.to(tl.int64) * J, c.to(c_out_ptr.dtype.element_ty), mask=mask_bj)
    part = (offs_b[:, None, None].to(tl.int64) * n_chunks + chunk) * J * D + jd[None, :, :]
    tl.store(partial_ptr + part, acc, mask=mask_bjd)

    # The counter is not reset between iterations: iteration r's last arrival sees (r + 1) n_chunks - 1. The same
    # barrier / release-acquire atomic / barrier handshake as the unfused kernel.
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr + group, 1, sem="acq_rel")
    if arrived == (r + 1) * n_chunks - 1:
        tl.debug_barrier()
        tl.store(cums_ptr + r * BJD + rows, cum, mask=mask_bjd)
        # one sample at a time, on [BLOCK_J, BLOCK_D] tiles as in the unfused kernel (on the whole group's tiles,
        # the float64 divisions' calls in the squash made ptxas spill)
        for bb in range(0, BLOCK_B):
            b = group * BLOCK_B + bb
            if b < B:
                row = b.to(tl.int64) * J * D
                s = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc_ty)
                for k in range(0, n_chunks):  # fixed order: deterministic
                    s += tl.load(partial_ptr + (b.to(tl.int64) * n_chunks + k) * J * D + jd, mask=mask_jd,
                                 other=0.0, volatile=True)
                v = squash(s, eps, 1)
                here = r * BJD + row + jd
                tl.store(sums_ptr + here, s, mask=mask_jd)
                tl.store(poses_ptr + here, v, mask=mask_jd)
                if LAST:
                    tl.store(v_out_ptr + row + jd, v.to(v_out_ptr.dtype.element_ty), mask=mask_jd)
                    length = vector_length(v, 1)
                    tl.store(len_out_ptr + b.to(tl.int64) * J + offs_j, length.to(len_out_ptr.dtype.element_ty),
                             mask=mask_j)
