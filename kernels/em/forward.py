"""EM routing forward kernels: each iteration's E-step and M-step fused into one pass over the votes.

Votes are read in their given layout [N, I, J, D] (rows n, children i, parents j, pose size D), one tile of
[BLOCK_I children, all J parents, all D] at a time. Per iteration t:

1. ``em_m_step_partials_kernel``, grid (N, NB): recomputes the assignments R^t of its children from the tiny
   statistics of iteration t-1 (mu, vhat [N, J, D], logit [N, J]; R^0 = 1/J), and accumulates the M-step moments
   sum_i R', sum_i R' (V - c), sum_i R' (V - c)^2 (R' = R a_i) into per-program partials [N, NB, J(, D)].
2. ``em_m_step_finalize_kernel``, grid (N,): sums the NB partials in a fixed order (deterministic) and computes
   mu, var, cost and the parent logits of iteration t, stored for the next pass and for the backward.

Numerics: the moments are shifted by c = mu^{t-1} (for t = 0, the vote of child 0), so the variance
sum coeff (V - mu)^2 = T2' - 2 d T1' + d^2 S0' (d = mu - c) cancels only |mu - c|^2 / var, not |mu|^2 / var;
identical votes give exactly zero. Everything is computed in float32 (float64 for float64 votes). The Gaussian's
-D/2 log(2 pi) is the same for every parent and cancels in the normalisation of R, so the kernels leave it out.

Votes reads per iteration: one (the partials pass). With ``child_index`` (convolutional layers) iterations t >= 1
read them twice: ``em_row_normaliser_kernel`` first writes each (row, child)'s logsumexp over parents, a small
torch step (``shared_child_logsumexp`` in kernels/em/op.py) combines them over every window that shares the
child, and the partials pass then normalises R by that (its scatter_add uses atomics on CUDA: the convolutional
mode is not bitwise deterministic; without child_index the kernels are). R itself is written only once, for the
last iteration.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.em.tiles import (
    assignments,
    gaussian_terms,
    log_numerators,
    parent_tile,
    sigmoid,
    store_partials,
    sum_partials,
    votes_tile,
)


@triton.jit
def _shift_tile(votes_ptr, mus_ptr, t, n, N, I, J, D, FIRST: tl.constexpr, BLOCK_J: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """The shift c [BJ, BD] of iteration t's moments: child 0's votes when FIRST, else mu of iteration t-1."""
    if FIRST:
        offs_j = tl.arange(0, BLOCK_J)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_j < J)[:, None] & (offs_d < D)[None, :]
        offs = n.to(tl.int64) * I * J * D + offs_j[:, None] * D + offs_d[None, :]
        shift = tl.load(votes_ptr + offs, mask=mask, other=0.0).to(mus_ptr.dtype.element_ty)
    else:
        shift = parent_tile(mus_ptr, (t - 1) * N + n, J, D, BLOCK_J, BLOCK_D, 0.0)
    return shift


@triton.jit
def em_row_normaliser_kernel(
    votes_ptr, mus_ptr, vhats_ptr, logits_ptr, consts_ptr, lse_ptr, prev, N, I, J, D,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """lse [N, I] = logsumexp over parents of the log numerators of iteration `prev`'s E-step. Grid (N, I / BI)."""
    n = tl.program_id(0)
    acc = mus_ptr.dtype.element_ty
    slot = prev * N + n
    mu, inv_var, bias = gaussian_terms(mus_ptr, vhats_ptr, logits_ptr, consts_ptr, slot, J, D, BLOCK_J, BLOCK_D)
    v, offs_i, mask_i, mask_j, mask_ij, mask = votes_tile(
        votes_ptr, n, tl.program_id(1) * BLOCK_I, I, J, D, BLOCK_I, BLOCK_J, BLOCK_D)
    log_num = log_numerators(v.to(acc), mu, inv_var, bias, mask_j)
    peak = tl.max(log_num, axis=1)
    lse = peak + tl.log(tl.sum(tl.exp(log_num - peak[:, None]), axis=1))
    tl.store(lse_ptr + n.to(tl.int64) * I + offs_i, lse, mask=mask_i)


@triton.jit
def em_m_step_partials_kernel(
    votes_ptr, act_ptr, mus_ptr, vhats_ptr, logits_ptr, consts_ptr, norms_ptr,
    s0_ptr, s1_ptr, s2_ptr, assign_ptr, t, N, I, J, D, NB, tiles,
    FIRST: tl.constexpr, SHARED: tl.constexpr, WRITE_R: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Shifted M-step moments of iteration t over `tiles` tiles of children. Grid (N, NB).

    R^t comes from iteration t-1's statistics (mus/vhats/logits [T, N, J(, D)]), normalised over the tile's
    parents or, when SHARED, by norms[t-1] [N, I]. Partials: s0 [N, NB, J] = sum R', s1/s2 [N, NB, J, D] =
    sum R' (V - c), sum R' (V - c)^2 with the shift c of ``_shift_tile``.
    WRITE_R stores R^t into assign [N, I, J] (the result's dtype).
    """
    n = tl.program_id(0)
    b = tl.program_id(1)
    acc = mus_ptr.dtype.element_ty
    prev = tl.maximum(t - 1, 0)  # iteration t-1's statistics (not read when FIRST)
    if FIRST:
        mu = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
        inv_var = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
        bias = tl.zeros([BLOCK_J], dtype=acc)
    else:
        mu, inv_var, bias = gaussian_terms(
            mus_ptr, vhats_ptr, logits_ptr, consts_ptr, prev * N + n, J, D, BLOCK_J, BLOCK_D)
    offs_j = tl.arange(0, BLOCK_J)
    shift = _shift_tile(votes_ptr, mus_ptr, t, n, N, I, J, D, FIRST, BLOCK_J, BLOCK_D)
    s0 = tl.zeros([BLOCK_J], dtype=acc)
    s1 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    s2 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    for k in range(0, tiles):
        v, offs_i, mask_i, mask_j, mask_ij, mask = votes_tile(
            votes_ptr, n, (b * tiles + k) * BLOCK_I, I, J, D, BLOCK_I, BLOCK_J, BLOCK_D)
        v = v.to(acc)
        norm = tl.zeros([BLOCK_I], dtype=acc)
        if SHARED:
            norm = tl.load(norms_ptr + (prev * N + n).to(tl.int64) * I + offs_i, mask=mask_i, other=0.0)
        R = assignments(v, mask_ij, mask_j, mu, inv_var, bias, norm, FIRST, SHARED)
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


@triton.jit
def em_m_step_finalize_kernel(
    s0_ptr, s1_ptr, s2_ptr, votes_ptr, beta_u_ptr, beta_a_ptr, consts_ptr,
    mus_ptr, vhats_ptr, logits_ptr, masses_ptr, pose_ptr, act_ptr, t, N, I, J, D, NB,
    FIRST: tl.constexpr, LAST: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Iteration t's parents from the partials, one row per program. Grid (N,).

    mass = sum_i R'; m = max(mass, eps); mu = c S0' + T1'; vhat = T2' - 2 d T1' + d^2 S0' (S0' = mass / m,
    T' = T / m, d = mu - c); var = vhat + min_var; cost = (D beta_u + 1/2 sum_h log var) mass;
    logit = lambda_t (beta_a - cost). Writes mus/vhats/logits/masses[t] (vhat rather than var, so that the
    backward has vhat exactly where vhat << min_var); LAST also the result's poses mu and activations
    sigmoid(logit).
    """
    n = tl.program_id(0)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d < D)[None, :]
    S0, T1, T2 = sum_partials(s0_ptr, s1_ptr, s2_ptr, n, J, D, NB, BLOCK_J, BLOCK_D)
    shift = _shift_tile(votes_ptr, mus_ptr, t, n, N, I, J, D, FIRST, BLOCK_J, BLOCK_D)
    min_var = tl.load(consts_ptr)
    eps = tl.load(consts_ptr + 1)
    lam = tl.load(consts_ptr + 2 + t)
    m = tl.maximum(S0, eps)
    s0n = (S0 / m)[:, None]
    t1 = T1 / m[:, None]
    t2 = T2 / m[:, None]
    mu = shift * s0n + t1
    d = t1 + shift * (s0n - 1.0)
    vhat = tl.maximum(t2 - 2.0 * d * t1 + d * d * s0n, 0.0)
    var = vhat + min_var
    log_var = tl.where(mask_jd, tl.log(tl.where(mask_jd, var, 1.0)), 0.0)
    beta_u = tl.load(beta_u_ptr + offs_j, mask=mask_j, other=0.0)
    beta_a = tl.load(beta_a_ptr + offs_j, mask=mask_j, other=0.0)
    cost = (D * beta_u + 0.5 * tl.sum(log_var, axis=1)) * S0
    logit = lam * (beta_a - cost)
    slot = (t * N + n).to(tl.int64)
    offs = slot * J * D + offs_j[:, None] * D + offs_d[None, :]
    tl.store(mus_ptr + offs, mu, mask=mask_jd)
    tl.store(vhats_ptr + offs, vhat, mask=mask_jd)
    tl.store(logits_ptr + slot * J + offs_j, logit, mask=mask_j)
    tl.store(masses_ptr + slot * J + offs_j, S0, mask=mask_j)
    if LAST:
        out = n.to(tl.int64) * J * D + offs_j[:, None] * D + offs_d[None, :]
        tl.store(pose_ptr + out, mu.to(pose_ptr.dtype.element_ty), mask=mask_jd)
        a = sigmoid(logit)
        tl.store(act_ptr + n.to(tl.int64) * J + offs_j, a.to(act_ptr.dtype.element_ty), mask=mask_j)
