"""EM routing forward in Triton: each iteration's E-step and M-step fused into one pass over the votes.

Votes are read in their given layout [N, I, J, D] (rows n, children i, parents j, pose size D), one tile of
[BLOCK_I children, all J parents, all D] at a time. Per iteration t:

1. ``_em_m_step_partials_kernel``, grid (N, NB): recomputes the assignments R^t of its children from the tiny
   statistics of iteration t-1 (mu, vhat [N, J, D], logit [N, J]; R^0 = 1/J), and accumulates the M-step moments
   sum_i R', sum_i R' (V - c), sum_i R' (V - c)^2 (R' = R a_i) into per-program partials [N, NB, J(, D)].
2. ``_em_m_step_finalize_kernel``, grid (N,): sums the NB partials in a fixed order (deterministic) and computes
   mu, var, cost and the parent logits of iteration t, stored for the next pass and for the backward.

Numerics: the moments are shifted by c = mu^{t-1} (for t = 0, the vote of child 0), so the variance
sum coeff (V - mu)^2 = T2' - 2 d T1' + d^2 S0' (d = mu - c) cancels only |mu - c|^2 / var, not |mu|^2 / var;
identical votes give exactly zero. Everything is computed in float32 (float64 for float64 votes). The Gaussian's
-D/2 log(2 pi) is the same for every parent and cancels in the normalisation of R, so the kernels leave it out.

Votes reads per iteration: one (the partials pass). With ``child_index`` (convolutional layers) iterations t >= 1
read them twice: ``_em_row_normaliser_kernel`` first writes each (row, child)'s logsumexp over parents, a small
torch step (``shared_child_logsumexp``) combines them over every window that shares the child, and the partials
pass then normalises R by that (its scatter_add uses atomics on CUDA: the convolutional mode is not bitwise
deterministic; without child_index the kernels are). R itself is written only once, for the last iteration.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from kernels.utils import block_size

# Elements of one [BLOCK_I, BLOCK_J, BLOCK_D] votes tile. Not tuned on a GPU (none was available when this was
# written): 2048 fp32 values keep about five live tiles within the registers of 4 warps.
TILE_ELEMENTS = 2048
NUM_WARPS = 4
# Programs per launch the child split aims for (a few per SM on an H100); also untuned.
TARGET_PROGRAMS = 2048
# Largest J * D tile (one child's votes, padded to powers of two) the kernels accept.
MAX_PARENT_TILE = 1 << 14


def allocate(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the EM kernels write comes from here (tests replace it to fill buffers with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def blocks(I: int, J: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_I, BLOCK_J, BLOCK_D) for votes [N, I, J, D]: J and D padded to powers of two, BLOCK_I fills the tile."""
    block_j, block_d = block_size(J, minimum=1), block_size(D, minimum=1)
    if block_j * block_d > MAX_PARENT_TILE:
        raise ValueError(
            f"the EM Triton kernels handle J * D up to {MAX_PARENT_TILE} (padded to powers of two), got J={J}, "
            f"D={D}; use backend='torch'"
        )
    block_i = min(block_size(I, minimum=1), max(1, TILE_ELEMENTS // (block_j * block_d)))
    return block_i, block_j, block_d


def child_split(N: int, I: int, block_i: int) -> tuple[int, int]:
    """(tiles per program, programs per row NB): few partials when there are many rows, many programs when few."""
    tiles_per_row = triton.cdiv(I, block_i)
    tiles = max(1, min(tiles_per_row, (N * tiles_per_row) // TARGET_PROGRAMS))
    return tiles, triton.cdiv(tiles_per_row, tiles)


def constants(iterations: int, final_lambda: float, min_var: float, eps: float, dtype, device) -> Tensor:
    """[min_var, eps, lambda_0 .. lambda_{T-1}] in the compute dtype (a tensor keeps float64 exact)."""
    lambdas = [final_lambda * (1 - 0.95 ** (t + 1)) for t in range(iterations)]
    return torch.tensor([min_var, eps, *lambdas], dtype=dtype, device=device)


def shared_child_logsumexp(lse: Tensor, child_index: Tensor, groups: int) -> Tensor:
    """Per-(row, child) logsumexp over parents [N, I] -> logsumexp over every (window, parent) pair of the
    sample's shared child child_index[n % P, i], gathered back to [N, I]."""
    N, I = lse.shape
    B = N // child_index.shape[0]
    per_row = lse.reshape(B, -1)
    flat = child_index.reshape(1, -1).expand(B, -1)
    peak = per_row.new_full((B, groups), float("-inf")).scatter_reduce(1, flat, per_row, "amax", include_self=True)
    total = per_row.new_zeros(B, groups).scatter_add(1, flat, torch.exp(per_row - peak.gather(1, flat)))
    return (peak + torch.log(total)).gather(1, flat).reshape(N, I).contiguous()


@triton.jit
def _votes_tile(votes_ptr, n, i0, I, J, D, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
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
def _parent_tile(ptr, slot, J, D, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, other):
    """[BJ, BD] values of a [*, J, D] buffer at row `slot` (other where padded)."""
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_j < J)[:, None] & (offs_d < D)[None, :]
    offs = slot.to(tl.int64) * J * D + offs_j[:, None] * D + offs_d[None, :]
    return tl.load(ptr + offs, mask=mask, other=other)


@triton.jit
def _parent_row(ptr, slot, J, BLOCK_J: tl.constexpr, other):
    """[BJ] values of a [*, J] buffer at row `slot` (other where padded)."""
    offs_j = tl.arange(0, BLOCK_J)
    return tl.load(ptr + slot.to(tl.int64) * J + offs_j, mask=offs_j < J, other=other)


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
        shift = _parent_tile(mus_ptr, (t - 1) * N + n, J, D, BLOCK_J, BLOCK_D, 0.0)
    return shift


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflowing exp for large |x|."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _variance_tile(vhats_ptr, consts_ptr, slot, J, D, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """var = vhat + min_var [BJ, BD] at row `slot` of a [*, J, D] buffer of vhat (1 where padded)."""
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_j < J)[:, None] & (offs_d < D)[None, :]
    vhat = tl.load(vhats_ptr + slot.to(tl.int64) * J * D + offs_j[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    return tl.where(mask, vhat + tl.load(consts_ptr), 1.0)


@triton.jit
def _gaussian_terms(mus_ptr, vhats_ptr, logits_ptr, consts_ptr, slot, J, D, BLOCK_J: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """E-step constants of one row's parents: mu [BJ, BD], 1 / var [BJ, BD], and
    log a_j - 1/2 sum_h log var_jh [BJ] (the log N(V; mu, var) terms that do not depend on the vote)."""
    mu = _parent_tile(mus_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
    var = _variance_tile(vhats_ptr, consts_ptr, slot, J, D, BLOCK_J, BLOCK_D)
    logit = _parent_row(logits_ptr, slot, J, BLOCK_J, 0.0)
    bias = _log_sigmoid(logit) - 0.5 * tl.sum(tl.log(var), axis=1)
    return mu, 1.0 / var, bias


@triton.jit
def _log_numerators(v, mu, inv_var, bias, mask_j):
    """log a_j + log N(V_ij; mu_j, var_j) (without -D/2 log 2 pi) for a tile [BI, BJ]; -inf for padded parents."""
    diff = v - mu[None, :, :]
    log_num = bias[None, :] - 0.5 * tl.sum(diff * diff * inv_var[None, :, :], axis=2)
    return tl.where(mask_j[None, :], log_num, float("-inf"))


@triton.jit
def _assignments(v, mask_ij, mask_j, mu, inv_var, bias, norm, FIRST: tl.constexpr, SHARED: tl.constexpr):
    """R [BI, BJ] of a tile (0 where padded): 1/J for the first iteration; else exp(log numerator) normalised
    over the tile's parents, or by the given shared-child log normalisers norm [BI] when SHARED."""
    if FIRST:
        R = tl.where(mask_ij, 1.0, 0.0).to(mu.dtype) / tl.sum(mask_j.to(mu.dtype), axis=0)
    else:
        log_num = _log_numerators(v, mu, inv_var, bias, mask_j)
        if SHARED:
            R = tl.exp(log_num - norm[:, None])
        else:
            peak = tl.max(log_num, axis=1)
            e = tl.exp(log_num - peak[:, None])
            R = e / tl.sum(e, axis=1)[:, None]
        R = tl.where(mask_ij, R, 0.0)
    return R


@triton.jit
def _em_row_normaliser_kernel(
    votes_ptr, mus_ptr, vhats_ptr, logits_ptr, consts_ptr, lse_ptr, prev, N, I, J, D,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """lse [N, I] = logsumexp over parents of the log numerators of iteration `prev`'s E-step. Grid (N, I / BI)."""
    n = tl.program_id(0)
    acc = mus_ptr.dtype.element_ty
    slot = prev * N + n
    mu, inv_var, bias = _gaussian_terms(mus_ptr, vhats_ptr, logits_ptr, consts_ptr, slot, J, D, BLOCK_J, BLOCK_D)
    v, offs_i, mask_i, mask_j, mask_ij, mask = _votes_tile(
        votes_ptr, n, tl.program_id(1) * BLOCK_I, I, J, D, BLOCK_I, BLOCK_J, BLOCK_D)
    log_num = _log_numerators(v.to(acc), mu, inv_var, bias, mask_j)
    peak = tl.max(log_num, axis=1)
    lse = peak + tl.log(tl.sum(tl.exp(log_num - peak[:, None]), axis=1))
    tl.store(lse_ptr + n.to(tl.int64) * I + offs_i, lse, mask=mask_i)


@triton.jit
def _store_partials(p0_ptr, p1_ptr, p2_ptr, P0, P1, P2, n, b, J, D, NB, BLOCK_J: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Store program b's partials of row n: P0 [BLOCK_J] into p0 [N, NB, J], P1 and P2 [BLOCK_J, BLOCK_D] into p1
    and p2 [N, NB, J, D] (what _sum_partials reads back)."""
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
def _sum_partials(p0_ptr, p1_ptr, p2_ptr, n, J, D, NB, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
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


@triton.jit
def _em_m_step_partials_kernel(
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
        mu, inv_var, bias = _gaussian_terms(
            mus_ptr, vhats_ptr, logits_ptr, consts_ptr, prev * N + n, J, D, BLOCK_J, BLOCK_D)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_jd = (offs_j < J)[:, None] & (offs_d < D)[None, :]
    shift = _shift_tile(votes_ptr, mus_ptr, t, n, N, I, J, D, FIRST, BLOCK_J, BLOCK_D)
    s0 = tl.zeros([BLOCK_J], dtype=acc)
    s1 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    s2 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    for k in range(0, tiles):
        v, offs_i, mask_i, mask_j, mask_ij, mask = _votes_tile(
            votes_ptr, n, (b * tiles + k) * BLOCK_I, I, J, D, BLOCK_I, BLOCK_J, BLOCK_D)
        v = v.to(acc)
        norm = tl.zeros([BLOCK_I], dtype=acc)
        if SHARED:
            norm = tl.load(norms_ptr + (prev * N + n).to(tl.int64) * I + offs_i, mask=mask_i, other=0.0)
        R = _assignments(v, mask_ij, mask_j, mu, inv_var, bias, norm, FIRST, SHARED)
        a = tl.load(act_ptr + n.to(tl.int64) * I + offs_i, mask=mask_i, other=0.0).to(acc)
        Rp = R * a[:, None]
        w = tl.where(mask, v - shift[None, :, :], 0.0)
        s0 += tl.sum(Rp, axis=0)
        s1 += tl.sum(Rp[:, :, None] * w, axis=0)
        s2 += tl.sum(Rp[:, :, None] * w * w, axis=0)
        if WRITE_R:
            offs = n.to(tl.int64) * I * J + offs_i.to(tl.int64)[:, None] * J + offs_j[None, :]
            tl.store(assign_ptr + offs, R.to(assign_ptr.dtype.element_ty), mask=mask_ij)
    _store_partials(s0_ptr, s1_ptr, s2_ptr, s0, s1, s2, n, b, J, D, NB, BLOCK_J, BLOCK_D)


@triton.jit
def _em_m_step_finalize_kernel(
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
    acc = mus_ptr.dtype.element_ty
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d < D)[None, :]
    S0, T1, T2 = _sum_partials(s0_ptr, s1_ptr, s2_ptr, n, J, D, NB, BLOCK_J, BLOCK_D)
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
        a = _sigmoid(logit)
        tl.store(act_ptr + n.to(tl.int64) * J + offs_j, a.to(act_ptr.dtype.element_ty), mask=mask_j)


def em_forward(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    child_index: Tensor | None,
    groups: int,
    iterations: int,
    final_lambda: float,
    min_var: float,
    eps: float,
) -> tuple[Tensor, ...]:
    """Run T = `iterations` fused EM iterations.

    votes [N, I, J, D] (float16/bfloat16/float32/float64, contiguous), activations [N, I], beta_u/beta_a [J]
    (compute dtype), child_index [P, I] int64 with `groups` > max(child_index) or None.
    Returns (poses [N, J, D], activations [N, J], assignments [N, I, J]) in the votes' dtype, then the saved
    statistics for the backward: mus, vhats [T, N, J, D] (vhat = var - min_var), logits, masses [T, N, J],
    norms [T-1, N, I] (the shared-child log normalisers; [0] without child_index).
    """
    N, I, J, D = votes.shape
    T = iterations
    acc = torch.float64 if votes.dtype == torch.float64 else torch.float32
    dev = votes.device
    block_i, block_j, block_d = blocks(I, J, D)
    tiles, NB = child_split(N, I, block_i)
    shared = child_index is not None
    consts = constants(T, final_lambda, min_var, eps, acc, dev)
    mus, vhats = allocate((T, N, J, D), acc, dev), allocate((T, N, J, D), acc, dev)
    logits, masses = allocate((T, N, J), acc, dev), allocate((T, N, J), acc, dev)
    norms = allocate((T - 1, N, I) if shared else (0,), acc, dev)
    pose, act = allocate((N, J, D), votes.dtype, dev), allocate((N, J), votes.dtype, dev)
    assign = allocate((N, I, J), votes.dtype, dev)
    s0, s1, s2 = allocate((N, NB, J), acc, dev), allocate((N, NB, J, D), acc, dev), allocate((N, NB, J, D), acc, dev)
    blocks_kw = dict(BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_D=block_d)
    for t in range(T):
        first, last = t == 0, t == T - 1
        if shared and not first:
            lse = allocate((N, I), acc, dev)
            wrap_triton(_em_row_normaliser_kernel)[(N, triton.cdiv(I, block_i))](
                votes, mus, vhats, logits, consts, lse, t - 1, N, I, J, D, **blocks_kw, num_warps=NUM_WARPS)
            norms[t - 1].copy_(shared_child_logsumexp(lse, child_index, groups))
        wrap_triton(_em_m_step_partials_kernel)[(N, NB)](
            votes, activations, mus, vhats, logits, consts, norms, s0, s1, s2, assign,
            t, N, I, J, D, NB, tiles, FIRST=first, SHARED=shared and not first, WRITE_R=last, **blocks_kw,
            num_warps=NUM_WARPS)
        wrap_triton(_em_m_step_finalize_kernel)[(N,)](
            s0, s1, s2, votes, beta_u, beta_a, consts, mus, vhats, logits, masses, pose, act,
            t, N, I, J, D, NB, FIRST=first, LAST=last, BLOCK_J=block_j, BLOCK_D=block_d, num_warps=NUM_WARPS)
    return pose, act, assign, mus, vhats, logits, masses, norms
