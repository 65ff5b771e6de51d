"""The @triton.jit helpers both dynamic-routing passes use (kernels.dynamic.forward and .backward)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def couplings(u, cum, mask_j):
    """softmax over parents of <u_ij, cum_j>: u [BI, BJ, BD], cum [BJ, BD] -> c [BI, BJ] (0 on padded parents)."""
    logits = tl.sum(u * cum[None, :, :], axis=2)
    logits = tl.where(mask_j[None, :], logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def program_tile(n_chunks, J, D, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
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
def vector_length(s, AXIS: tl.constexpr):
    """|s| along AXIS from s divided by its largest |entry|, so that the squares neither overflow nor underflow."""
    peak = tl.max(tl.abs(s), axis=AXIS)
    scale = tl.where(peak > 0, peak, 1.0)
    t = s / tl.expand_dims(scale, AXIS)
    return scale * tl.sqrt(tl.sum(t * t, axis=AXIS))


@triton.jit
def squash_factors(n, eps):
    """(f(n), f(n) / min(n, 1)^2, n f'(n) / f(n)) for lengths n >= 0, f(n) = n^2 / ((1 + n^2) sqrt(n^2 + eps)):
    written as is for n <= 1 and without forming n^2 above (1 / ((n + 1/n) sqrt(1 + eps/n^2))), finite for every
    float (routing.squash)."""
    small = tl.minimum(n, 1.0)
    large = tl.maximum(n, 1.0)
    small2 = small * small
    g_small = 1 / ((1 + small2) * tl.sqrt(small2 + eps))
    large_sum = large + 1 / large
    f_large = 1 / (large_sum * tl.sqrt(1 + eps / large / large))
    slope_small = 2 / (1 + small2) - small2 / (small2 + eps)
    slope_large = 2 / large / large_sum - 1 / (1 + eps / large / large)
    above = n > 1
    return (tl.where(above, f_large, small2 * g_small), tl.where(above, f_large, g_small),
            tl.where(above, slope_large, slope_small))


@triton.jit
def squash(s, eps, AXIS: tl.constexpr):
    """squash(s) = f(|s|) s along AXIS (routing.squash.squash)."""
    f, _, _ = squash_factors(vector_length(s, AXIS), eps)
    return s * tl.expand_dims(f, AXIS)


@triton.jit
def squash_backward(s, g, eps):
    """grad_s = f grad_v + n f'(n) <e, grad_v> e for s, grad_v [BLOCK_J, BLOCK_D], with e = s / n taken as
    s / max(n, 1) and the matching factor (routing.squash.squash_backward)."""
    n = vector_length(s, 1)
    f, f_over, slope = squash_factors(n, eps)
    t = s / tl.maximum(n, 1.0)[:, None]
    return f[:, None] * g + (f_over * slope * tl.sum(t * g, axis=1))[:, None] * t
