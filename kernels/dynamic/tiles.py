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

