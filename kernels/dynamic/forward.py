"""Dynamic routing forward kernel: one launch per iteration, each reading the votes once.

A program owns one sample and one chunk of its children, and streams the chunk in sub-blocks of BLOCK_I children
(all parents, all pose entries). Per sub-block it recomputes the logits from cum_r, takes the softmax over parents
and accumulates c_ij a_i u_ij. Its partial sum over the chunk goes to a workspace [B, n_chunks, J, D]; an atomic
counter per sample tells the program that finishes last, which adds the partials in chunk order (exact and
deterministic: the order does not depend on which program came last) and squashes: s_r, v_r and cum_r go to
[T, B, J, D] buffers for the backward, and the last iteration writes the outputs v [B, J, D], |v| [B, J] and its
couplings c [B, I, J]. Notation and the cross-program sum: kernels/dynamic/__init__.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.dynamic.tiles import couplings, program_tile, squash, vector_length


@triton.jit
def dynamic_routing_forward_kernel(
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
    b, chunk, offs_j, offs_d, mask_j, mask_jd, jd, row = program_tile(n_chunks, J, D, BLOCK_J, BLOCK_D)

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
        c = couplings(u, cum, mask_j)
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
        v = squash(s, eps, 1)
        here = r * BJD + row + jd
        tl.store(sums_ptr + here, s, mask=mask_jd)
        tl.store(poses_ptr + here, v, mask=mask_jd)
        tl.store(cums_ptr + here, cum, mask=mask_jd)
        if LAST:
            tl.store(v_out_ptr + row + jd, v.to(v_out_ptr.dtype.element_ty), mask=mask_jd)
            length = vector_length(v, 1)
            tl.store(len_out_ptr + b.to(tl.int64) * J + offs_j, length.to(len_out_ptr.dtype.element_ty), mask=mask_j)
