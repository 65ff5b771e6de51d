"""EM routing's M-step partials kernel for a dense capsule layer: the votes are formed inside the kernel.

``router(poses, activations, transforms=W)``: the votes V_ij = W[i, j] @ x[n, i] (W [I, J, D, K], poses x
[N, I, K]) never go to memory. ``em_votes_partials_kernel`` is ``em_m_step_partials_kernel``
(kernels/em/forward.py) with each [BLOCK_I, BLOCK_J, BLOCK_D] votes tile formed from W's slices and the row's
poses (kernels/linear_votes.py; W is shared by every row, so its tiles come from the cache) instead of read, and
without the shared-child mode (a dense layer has no windows). Its partials go to the unfused
``em_m_step_finalize_kernel``; the first iteration's shift (child 0's votes of each row, [N, J, D]) is formed on
the host, and the finalize kernel reads it as votes with one child. Notation and numerics: kernels/em/forward.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.em.tiles import assignments, gaussian_terms, parent_tile, store_partials
from kernels.linear_votes import child_votes


@triton.jit
def em_votes_partials_kernel(
    x_ptr, w_ptr, act_ptr, mus_ptr, vhats_ptr, logits_ptr, consts_ptr, shift_ptr,
    s0_ptr, s1_ptr, s2_ptr, assign_ptr, t, N, I, J, D, K, stride_xn, stride_xi, stride_xk, NB, tiles,
    FIRST: tl.constexpr, WRITE_R: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Shifted M-step moments of iteration t over `tiles` tiles of children of row n, votes formed from x [N, I, K]
    (strided) and W [I, J, D, K] (contiguous). Grid (N, NB).

    As em_m_step_partials_kernel: R^t from iteration t-1's statistics (1/J when FIRST), partials s0 [N, NB, J],
    s1/s2 [N, NB, J, D] of R' = R a, R' (V - c), R' (V - c)^2 with c = shift [N, J, D] when FIRST, else
    mu^{t-1}; WRITE_R stores R^t into assign [N, I, J].
    """
    n = tl.program_id(0)
    b = tl.program_id(1)
    acc = mus_ptr.dtype.element_ty
    prev = tl.maximum(t - 1, 0)  # iteration t-1's statistics (not read when FIRST)
    if FIRST:
        mu = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
        inv_var = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
        bias = tl.zeros([BLOCK_J], dtype=acc)
        shift = parent_tile(shift_ptr, n, J, D, BLOCK_J, BLOCK_D, 0.0)
    else:
        mu, inv_var, bias = gaussian_terms(
            mus_ptr, vhats_ptr, logits_ptr, consts_ptr, prev * N + n, J, D, BLOCK_J, BLOCK_D)
        shift = parent_tile(mus_ptr, prev * N + n, J, D, BLOCK_J, BLOCK_D, 0.0)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d < D)[None, :]
    s0 = tl.zeros([BLOCK_J], dtype=acc)
    s1 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    s2 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    for k in range(0, tiles):
        offs_i = (b * tiles + k) * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_i = offs_i < I
        mask_ij = mask_i[:, None] & mask_j[None, :]
        mask = mask_ij[:, :, None] & mask_jd[None, :, :]
        v = child_votes(x_ptr, w_ptr, n, offs_i, mask_i, mask_jd, J, D, K, stride_xn, stride_xi, stride_xk,
                        BLOCK_I, BLOCK_J, BLOCK_D, acc)
        norm = tl.zeros([BLOCK_I], dtype=acc)
        R = assignments(v, mask_ij, mask_j, mu, inv_var, bias, norm, FIRST, False)
        a = tl.load(act_ptr + n.to(tl.int64) * I + offs_i, mask=mask_i, other=0.0).to(acc)
        Rp = R * a[:, None]
        w = tl.where(mask, v - shift[None, :, :], 0.0)
        s0 += tl.sum(Rp, axis=0)
        s1 += tl.sum(Rp[:, :, None] * w, axis=0)
        s2 += tl.sum(Rp[:, :, None] * w * w, axis=0)
        if WRITE_R:
            offs = n.to(tl.int64) * I * J + offs_i.to(tl.int64)[:, None] * J + offs_j[None, :]
            tl.store(assign_ptr + offs, R.to(assign_ptr.dtype.element_ty), mask=mask_ij)
    store_partials(s0_ptr, s1_ptr, s2_ptr, s0, s1, s2, n, b, J, D, NB, BLOCK_J, BLOCK_D)
