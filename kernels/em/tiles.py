"""The @triton.jit helpers EM routing's forward and backward kernels share (kernels/em/forward.py, backward.py).

Tiles of the votes [N, I, J, D] and of the per-parent statistics [*, J, D] / [*, J], the E-step's assignments,
and the per-program partial sums over children [N, NB, J(, D)] with their fixed-order reduction.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def votes_tile(votes_ptr, n, i0, I, J, D, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """Children i0 .. i0 + BLOCK_I of row n: (V [BI, BJ, BD] in the votes' dtype, 0 where padded, child
    offsets [BI], child mask [BI], parent mask [BJ], (child, parent) mask [BI, BJ], full mask [BI, BJ, BD])."""
    offs_i = i0 + tl.arange(0, BLOCK_I)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_i = offs_i < I
    mask_j = offs_j < J
    mask_ij = mask_i[:, None] & mask_j[None, :]
    mask = mask_ij[:, :, None] & (offs_d < D)[None, None, :]
    row = n.to(tl.int64) * I * J * D
    offs = row + offs_i.to(tl.int64)[:, None, None] * (J * D) + offs_j[None, :, None] * D + offs_d[None, None, :]
    v = tl.load(votes_ptr + offs, mask=mask, other=0.0)
    return v, offs_i, mask_i, mask_j, mask_ij, mask


@triton.jit
def parent_tile(ptr, slot, J, D, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, other):
    """[BJ, BD] values of a [*, J, D] buffer at row `slot` (other where padded)."""
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_j < J)[:, None] & (offs_d < D)[None, :]
    offs = slot.to(tl.int64) * J * D + offs_j[:, None] * D + offs_d[None, :]
    return tl.load(ptr + offs, mask=mask, other=other)


@triton.jit
def parent_row(ptr, slot, J, BLOCK_J: tl.constexpr, other):
    """[BJ] values of a [*, J] buffer at row `slot` (other where padded)."""
    offs_j = tl.arange(0, BLOCK_J)
    return tl.load(ptr + slot.to(tl.int64) * J + offs_j, mask=offs_j < J, other=other)


@triton.jit
def log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def sigmoid(x):
    """1 / (1 + exp(-x)) without overflowing exp for large |x|."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def variance_tile(vhats_ptr, consts_ptr, slot, J, D, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """var = vhat + min_var [BJ, BD] at row `slot` of a [*, J, D] buffer of vhat (1 where padded)."""
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_j < J)[:, None] & (offs_d < D)[None, :]
    vhat = tl.load(vhats_ptr + slot.to(tl.int64) * J * D + offs_j[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    return tl.where(mask, vhat + tl.load(consts_ptr), 1.0)


@triton.jit
def gaussian_terms(mus_ptr, vhats_ptr, logits_ptr, consts_ptr, slot, J, D, BLOCK_J: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """E-step constants of one row's parents: mu [BJ, BD], 1 / var [BJ, BD], and
    log a_j - 1/2 sum_h log var_jh [BJ] (the log N(V; mu, var) terms that do not depend on the vote)."""
    mu = parent_tile(mus_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
    var = variance_tile(vhats_ptr, consts_ptr, slot, J, D, BLOCK_J, BLOCK_D)
    logit = parent_row(logits_ptr, slot, J, BLOCK_J, 0.0)
    bias = log_sigmoid(logit) - 0.5 * tl.sum(tl.log(var), axis=1)
    return mu, 1.0 / var, bias


@triton.jit
def log_numerators(v, mu, inv_var, bias, mask_j):
    """log a_j + log N(V_ij; mu_j, var_j) (without -D/2 log 2 pi) for a tile [BI, BJ]; -inf for padded parents."""
    diff = v - mu[None, :, :]
    log_num = bias[None, :] - 0.5 * tl.sum(diff * diff * inv_var[None, :, :], axis=2)
    return tl.where(mask_j[None, :], log_num, float("-inf"))


@triton.jit
def assignments(v, mask_ij, mask_j, mu, inv_var, bias, norm, FIRST: tl.constexpr, SHARED: tl.constexpr):
    """R [BI, BJ] of a tile (0 where padded): 1/J for the first iteration; else exp(log numerator) normalised
    over the tile's parents, or by the given shared-child log normalisers norm [BI] when SHARED."""
    if FIRST:
        R = tl.where(mask_ij, 1.0, 0.0).to(mu.dtype) / tl.sum(mask_j.to(mu.dtype), axis=0)
    else:
        log_num = log_numerators(v, mu, inv_var, bias, mask_j)
        if SHARED:
            R = tl.exp(log_num - norm[:, None])
        else:
            peak = tl.max(log_num, axis=1)
            e = tl.exp(log_num - peak[:, None])
            R = e / tl.sum(e, axis=1)[:, None]
        R = tl.where(mask_ij, R, 0.0)
    return R


@triton.jit
def store_partials(p0_ptr, p1_ptr, p2_ptr, P0, P1, P2, n, b, J, D, NB, BLOCK_J: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Store program b's partials of row n: P0 [BLOCK_J] into p0 [N, NB, J], P1 and P2 [BLOCK_J, BLOCK_D] into p1
    and p2 [N, NB, J, D] (what sum_partials reads back)."""
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d < D)[None, :]
    part = n.to(tl.int64) * NB + b
    tl.store(p0_ptr + part * J + offs_j, P0, mask=mask_j)
    offs_jd = part * J * D + offs_j[:, None] * D + offs_d[None, :]
    tl.store(p1_ptr + offs_jd, P1, mask=mask_jd)
    tl.store(p2_ptr + offs_jd, P2, mask=mask_jd)


@triton.jit
def sum_partials(p0_ptr, p1_ptr, p2_ptr, n, J, D, NB, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row n's per-program partials p0 [N, NB, J], p1 and p2 [N, NB, J, D] summed over the NB programs in a fixed
    order (deterministic): returns [BLOCK_J], [BLOCK_J, BLOCK_D], [BLOCK_J, BLOCK_D] in the partials' dtype."""
    acc = p1_ptr.dtype.element_ty
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d < D)[None, :]
    P0 = tl.zeros([BLOCK_J], dtype=acc)
    P1 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    P2 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    for b in range(0, NB):
        part = n.to(tl.int64) * NB + b
        P0 += tl.load(p0_ptr + part * J + offs_j, mask=mask_j, other=0.0)
        offs_jd = part * J * D + offs_j[:, None] * D + offs_d[None, :]
        P1 += tl.load(p1_ptr + offs_jd, mask=mask_jd, other=0.0)
        P2 += tl.load(p2_ptr + offs_jd, mask=mask_jd, other=0.0)
    return P0, P1, P2
