"""Dynamic routing backward kernel: exact gradients into the votes and activations.

routing.dynamic's PyTorch backward is the same math. With gs_r the gradient of s_r, the votes' gradient is
sum_r w_r (x) gs_r + sum_{r < T-1} G_{r+1} (x) v_r, where w_r = c_r a and G_r [B, I, J] is the total gradient of
the logits b_r (a sum over the later iterations of softmax-backward terms). gs_{T-1} comes from the outputs'
gradients; gs_{r-1} = squash'(s_{r-1}) (sum_i G_r[i] u_i) is a sum over all children, so it takes one "reduction
pass" over the votes, with the same workspace, counter and ordered sum as the forward. A final pass then writes
the votes' and activations' gradients once. Every pass recomputes what it needs (c_r, G_r) from the votes and the
[T, B, J, D] buffers, so memory stays O(votes) for any T. In the detach_inner mode only the last iteration is
differentiated: one pass. Notation and the cross-program sum: kernels/dynamic/__init__.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.dynamic.tiles import couplings, program_tile, squash_backward, vector_length


@triton.jit
def dynamic_routing_backward_kernel(
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
    b, chunk, offs_j, offs_d, mask_j, mask_jd, jd, row = program_tile(n_chunks, J, D, BLOCK_J, BLOCK_D)

    # gs_{T-1} from the outputs' gradients: grad_v + grad_|v| v / |v|, through the squash
    top = (T - 1) * BJD + row + jd
    v_top = tl.load(poses_ptr + top, mask=mask_jd, other=0.0)
    length = vector_length(v_top, 1)
    safe = tl.where(length > 0, length, 1.0)
    g_len = tl.load(grad_len_ptr + b.to(tl.int64) * J + offs_j, mask=mask_j, other=0.0)
    g_top = tl.load(grad_v_ptr + row + jd, mask=mask_jd, other=0.0) + g_len[:, None] * (v_top / safe[:, None])
    gs_top = squash_backward(tl.load(sums_ptr + top, mask=mask_jd, other=0.0), g_top, eps)

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
            c = couplings(u, tl.load(cums_ptr + here, mask=mask_jd, other=0.0), mask_j)
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
        tl.debug_barrier()  # the same handshake as the forward kernel (kernels/dynamic/forward.py)
        arrived = tl.atomic_add(counter_ptr + b, 1, sem="acq_rel")
        if arrived == (pass_index + 1) * n_chunks - 1:
            tl.debug_barrier()
            gv = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc_ty)
            for kk in range(0, n_chunks):  # fixed order: deterministic
                gv += tl.load(partial_ptr + (b.to(tl.int64) * n_chunks + kk) * J * D + jd, mask=mask_jd,
                              other=0.0, volatile=True)
            below = (stop - 1) * BJD + row + jd
            s = tl.load(sums_ptr + below, mask=mask_jd, other=0.0)
            tl.store(gs_ptr + below, squash_backward(s, gv, eps), mask=mask_jd)
