"""EM routing backward kernels: exact gradients through every iteration into votes, activations and betas.

Per row, iteration t of the forward (see kernels/em/forward.py) has R' = R^t a, mass_j = sum_i R'_ij,
m_j = max(mass_j, eps), coeff = R' / m, mu = sum_i coeff V, vhat = sum_i coeff (V - mu)^2, var = vhat + min_var,
cost_j = (D beta_u + 1/2 sum_h log var_jh) mass_j, logit_j = lambda_t (beta_a - cost_j), and (t < T-1)
L^t_ij = log sigmoid(logit_j) + log N(V_ij; mu_j, var_j), R^{t+1} = softmax_j L^t (or the shared-child
normalisation). Going back from t = T-1 to 0, with c_j = [mass_j >= eps]:

parents of iteration t (``em_backward_parents_kernel``, grid (N,)), from the E-step sums G0_j = sum_i gL^t_ij,
G1/G2_jh = sum_i gL^t_ij (V - mu)^{1,2} and, for t = T-1, the upstream gradients of mu and sigmoid(logit):
    g_mu = G1 / var (+ upstream),  g_var = G2 / (2 var^2) - G0 / (2 var),  g_logit = G0 sigmoid(-logit) (+ upstream)
    g_cost = -lambda_t g_logit;  g_beta_a += lambda_t g_logit;  g_beta_u += D mass g_cost
    g_var_tot = g_var + g_cost mass / (2 var);  g_mass = g_cost (D beta_u + 1/2 sum_h log var)
    g_mu_tot = g_mu - 2 g_var_tot mu (1 - mass / m)
children of iteration t (``em_backward_stage_kernel`` for t >= 1, ``em_backward_votes_kernel`` for t = 0):
    g_R'_ij = sum_h [g_mu_tot (V - mu) + g_var_tot ((V - mu)^2 - c vhat)] / m + K_j (1 - c_j) / m_j + g_mass_j
              (K_j = sum_h g_mu_tot mu: the part of d mu / d R' that the mean's normaliser cancels when c_j = 1)
    g_a_i += sum_j g_R'_ij R_ij;  g_R^t = g_R' a (+ upstream for t = T-1)
    gL^{t-1} = R^t (g_R^t - q),  q_i = sum_j R^t_ij g_R^t_ij (summed over all windows of a shared child)
    g_V += coeff^t (g_mu_tot + 2 g_var_tot (V - mu^t)) - gL^t (V - mu^t) / var^t
The stage pass of iteration t recomputes R^t from iteration t-1's statistics, stores coeff^t and gL^{t-1}
([T-1, N, I, J], 1/D of the votes each) and the E-step sums of iteration t-1 as per-program partials; the last
pass writes the votes' gradient once from them. Votes reads: one per iteration (two per iteration t >= 1 with
child_index: a first pass writes q for the shared-child sums), and one write of their gradient.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.em.tiles import (
    assignments,
    gaussian_terms,
    parent_row,
    parent_tile,
    sigmoid,
    store_partials,
    sum_partials,
    variance_tile,
    votes_tile,
)


@triton.jit
def _m_step_terms(mus_ptr, vhats_ptr, masses_ptr, gmus_ptr, gvars_ptr, gmass_ptr, consts_ptr, slot, J, D,
                  BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per-parent factors of iteration `slot`'s M-step backward: mu, g_mu_tot / m, g_var_tot / m, c vhat
    [BJ, BD], the constant K (1 - c) / m + g_mass and 1 / m [BJ], and g_mu_tot, g_var_tot [BJ, BD]."""
    eps = tl.load(consts_ptr + 1)
    mu = parent_tile(mus_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
    vhat = parent_tile(vhats_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
    mass = parent_row(masses_ptr, slot, J, BLOCK_J, 0.0)
    gmu = parent_tile(gmus_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
    gvar = parent_tile(gvars_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
    gmass = parent_row(gmass_ptr, slot, J, BLOCK_J, 0.0)
    inv_m = 1.0 / tl.maximum(mass, eps)
    kept = (mass >= eps).to(mu.dtype)  # clamp_min passes the gradient where mass >= eps
    cvhat = kept[:, None] * vhat
    offset = tl.sum(gmu * mu, axis=1) * (1.0 - kept) * inv_m + gmass
    return mu, gmu * inv_m[:, None], gvar * inv_m[:, None], cvhat, offset, inv_m, gmu, gvar


@triton.jit
def _grad_weighted_votes(v, mu, gmu_m, gvar_m, cvhat, offset, mask_ij):
    """g_R' [BI, BJ] of a tile (0 where padded) from the factors of ``_m_step_terms``."""
    diff = v - mu[None, :, :]
    g = tl.sum(gmu_m[None, :, :] * diff + gvar_m[None, :, :] * (diff * diff - cvhat[None, :, :]), axis=2)
    return tl.where(mask_ij, g + offset[None, :], 0.0)


@triton.jit
def _accumulate_rows(ptr, offs, value, mask, ACCUMULATE: tl.constexpr):
    """ptr[offs] (+)= value: the first pass that touches a buffer writes it, later ones add to it."""
    if ACCUMULATE:
        value += tl.load(ptr + offs, mask=mask, other=0.0)
    tl.store(ptr + offs, value, mask=mask)


@triton.jit
def em_backward_parents_kernel(
    g0_ptr, g1_ptr, g2_ptr, mus_ptr, vhats_ptr, logits_ptr, masses_ptr, beta_u_ptr, consts_ptr,
    grad_pose_ptr, grad_act_ptr, gmus_ptr, gvars_ptr, gmass_ptr, gbu_ptr, gba_ptr, t, N, J, D, NB,
    HAS_E: tl.constexpr, LAST: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Parent-side gradients of iteration t for one row (see the module docstring). Grid (N,).

    HAS_E: the E-step partials g0 [N, NB, J], g1/g2 [N, NB, J, D] of iteration t are given (t < T-1).
    LAST: t = T-1, adds the upstream gradients of the poses [N, J, D] and activations [N, J] and writes (rather
    than adds to) the per-row beta gradients gbu/gba [N, J]. Writes gmus/gvars [T, N, J, D], gmass [T, N, J].
    """
    n = tl.program_id(0)
    acc = mus_ptr.dtype.element_ty
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < J
    mask_jd = mask_j[:, None] & (offs_d < D)[None, :]
    slot = t * N + n
    mu = parent_tile(mus_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
    var = variance_tile(vhats_ptr, consts_ptr, slot, J, D, BLOCK_J, BLOCK_D)
    logit = parent_row(logits_ptr, slot, J, BLOCK_J, 0.0)
    mass = parent_row(masses_ptr, slot, J, BLOCK_J, 0.0)
    g_mu = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    g_var = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    g_logit = tl.zeros([BLOCK_J], dtype=acc)
    if HAS_E:
        G0, G1, G2 = sum_partials(g0_ptr, g1_ptr, g2_ptr, n, J, D, NB, BLOCK_J, BLOCK_D)
        inv_var = 1.0 / var
        g_mu += G1 * inv_var
        g_var += 0.5 * inv_var * (G2 * inv_var - G0[:, None])
        g_logit += G0 * sigmoid(-logit)  # d log sigmoid(x) / dx = sigmoid(-x)
    if LAST:
        g_mu += parent_tile(grad_pose_ptr, n, J, D, BLOCK_J, BLOCK_D, 0.0).to(acc)
        a = sigmoid(logit)
        g_logit += parent_row(grad_act_ptr, n, J, BLOCK_J, 0.0).to(acc) * a * (1.0 - a)
    eps = tl.load(consts_ptr + 1)
    lam = tl.load(consts_ptr + 2 + t)
    beta_u = tl.load(beta_u_ptr + offs_j, mask=mask_j, other=0.0)
    g_cost = -lam * g_logit
    g_var_tot = g_var + (0.5 * g_cost * mass)[:, None] / var
    log_var = tl.log(var)
    g_mass = g_cost * (D * beta_u + 0.5 * tl.sum(log_var, axis=1))
    g_mu_tot = g_mu - 2.0 * g_var_tot * mu * (1.0 - mass / tl.maximum(mass, eps))[:, None]
    offs = slot.to(tl.int64) * J * D + offs_j[:, None] * D + offs_d[None, :]
    tl.store(gmus_ptr + offs, g_mu_tot, mask=mask_jd)
    tl.store(gvars_ptr + offs, g_var_tot, mask=mask_jd)
    tl.store(gmass_ptr + slot.to(tl.int64) * J + offs_j, g_mass, mask=mask_j)
    row = n.to(tl.int64) * J + offs_j
    _accumulate_rows(gba_ptr, row, lam * g_logit, mask_j, not LAST)
    _accumulate_rows(gbu_ptr, row, D * mass * g_cost, mask_j, not LAST)


@triton.jit
def em_backward_stage_kernel(
    votes_ptr, act_ptr, mus_ptr, vhats_ptr, logits_ptr, masses_ptr, norms_ptr, gmus_ptr, gvars_ptr, gmass_ptr,
    consts_ptr, grad_assign_ptr, q_ptr, coeff_ptr, gl_ptr, gact_ptr, g0_ptr, g1_ptr, g2_ptr,
    t, N, I, J, D, NB, tiles,
    SHARED: tl.constexpr, Q_ONLY: tl.constexpr, LAST: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Children-side backward of iteration t >= 1's M-step and iteration t-1's E-step. Grid (N, NB).

    Recomputes R^t (from iteration t-1's statistics; SHARED: with norms[t-1] [N, I]); LAST (t = T-1) adds the
    upstream gradient of the assignments grad_assign [N, I, J]. Q_ONLY (SHARED, first of two passes) only writes
    q [N, I] = sum_j R g_R; otherwise q comes from the tile (or, SHARED, from q_ptr: the shared-child sums), and
    the pass writes coeff^t to coeff[t-1] and gL^{t-1} to gl[t-1] ([T-1, N, I, J]), adds sum_j g_R' R to
    gact [N, I] (writes it when LAST), and writes iteration t-1's E-step partials g0 [N, NB, J],
    g1/g2 [N, NB, J, D] = sum_i gL, sum_i gL (V - mu^{t-1}), sum_i gL (V - mu^{t-1})^2.
    """
    n = tl.program_id(0)
    b = tl.program_id(1)
    acc = mus_ptr.dtype.element_ty
    prev = (t - 1) * N + n
    mu_p, inv_var_p, bias_p = gaussian_terms(mus_ptr, vhats_ptr, logits_ptr, consts_ptr, prev, J, D, BLOCK_J, BLOCK_D)
    mu, gmu_m, gvar_m, cvhat, offset, inv_m, gmu, gvar = _m_step_terms(
        mus_ptr, vhats_ptr, masses_ptr, gmus_ptr, gvars_ptr, gmass_ptr, consts_ptr, t * N + n, J, D, BLOCK_J, BLOCK_D)
    offs_j = tl.arange(0, BLOCK_J)
    G0 = tl.zeros([BLOCK_J], dtype=acc)
    G1 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    G2 = tl.zeros([BLOCK_J, BLOCK_D], dtype=acc)
    for k in range(0, tiles):
        v, offs_i, mask_i, mask_j, mask_ij, mask = votes_tile(
            votes_ptr, n, (b * tiles + k) * BLOCK_I, I, J, D, BLOCK_I, BLOCK_J, BLOCK_D)
        v = v.to(acc)
        row_i = n.to(tl.int64) * I + offs_i
        norm = tl.zeros([BLOCK_I], dtype=acc)
        if SHARED:
            norm = tl.load(norms_ptr + prev.to(tl.int64) * I + offs_i, mask=mask_i, other=0.0)
        R = assignments(v, mask_ij, mask_j, mu_p, inv_var_p, bias_p, norm, False, SHARED)
        a = tl.load(act_ptr + row_i, mask=mask_i, other=0.0).to(acc)
        g_rp = _grad_weighted_votes(v, mu, gmu_m, gvar_m, cvhat, offset, mask_ij)
        g_R = g_rp * a[:, None]
        offs_ij = row_i[:, None] * J + offs_j[None, :]
        if LAST:
            g_R += tl.load(grad_assign_ptr + offs_ij, mask=mask_ij, other=0.0).to(acc)
        q = tl.sum(R * g_R, axis=1)
        if Q_ONLY:
            tl.store(q_ptr + row_i, q, mask=mask_i)
        else:
            if SHARED:
                q = tl.load(q_ptr + row_i, mask=mask_i, other=0.0)
            gL = R * (g_R - q[:, None])
            store = prev.to(tl.int64) * I * J + offs_i.to(tl.int64)[:, None] * J + offs_j[None, :]
            tl.store(coeff_ptr + store, R * a[:, None] * inv_m[None, :], mask=mask_ij)
            tl.store(gl_ptr + store, gL, mask=mask_ij)
            _accumulate_rows(gact_ptr, row_i, tl.sum(g_rp * R, axis=1), mask_i, not LAST)
            diff = tl.where(mask, v - mu_p[None, :, :], 0.0)
            G0 += tl.sum(gL, axis=0)
            G1 += tl.sum(gL[:, :, None] * diff, axis=0)
            G2 += tl.sum(gL[:, :, None] * diff * diff, axis=0)
    if not Q_ONLY:
        store_partials(g0_ptr, g1_ptr, g2_ptr, G0, G1, G2, n, b, J, D, NB, BLOCK_J, BLOCK_D)


@triton.jit
def em_backward_votes_kernel(
    votes_ptr, act_ptr, mus_ptr, vhats_ptr, masses_ptr, gmus_ptr, gvars_ptr, gmass_ptr, consts_ptr,
    coeff_ptr, gl_ptr, gvotes_ptr, gact_ptr, T, N, I, J, D,
    ACCUMULATE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The votes' gradient [N, I, J] from every iteration, and iteration 0's part of gact [N, I] (added when
    ACCUMULATE, i.e. T > 1). Grid (N, I / BI).

    g_V = sum_t coeff^t (g_mu_tot^t + 2 g_var_tot^t (V - mu^t)) - sum_{t < T-1} gL^t (V - mu^t) / var^t, with
    coeff^0 = a / (J m^0) and coeff^t, gL^t from the stage passes.
    """
    n = tl.program_id(0)
    acc = mus_ptr.dtype.element_ty
    v, offs_i, mask_i, mask_j, mask_ij, mask = votes_tile(
        votes_ptr, n, tl.program_id(1) * BLOCK_I, I, J, D, BLOCK_I, BLOCK_J, BLOCK_D)
    v = v.to(acc)
    offs_j = tl.arange(0, BLOCK_J)
    row_i = n.to(tl.int64) * I + offs_i
    a = tl.load(act_ptr + row_i, mask=mask_i, other=0.0).to(acc)
    # iteration 0: R^0 = 1/J, the only iteration whose assignments carry no gradient further back
    mu, gmu_m, gvar_m, cvhat, offset, inv_m, gmu, gvar = _m_step_terms(
        mus_ptr, vhats_ptr, masses_ptr, gmus_ptr, gvars_ptr, gmass_ptr, consts_ptr, n, J, D, BLOCK_J, BLOCK_D)
    R = tl.where(mask_ij, 1.0, 0.0).to(acc) / tl.sum(mask_j.to(acc), axis=0)
    g_rp = _grad_weighted_votes(v, mu, gmu_m, gvar_m, cvhat, offset, mask_ij)
    _accumulate_rows(gact_ptr, row_i, tl.sum(g_rp * R, axis=1), mask_i, ACCUMULATE)
    coeff = R * a[:, None] * inv_m[None, :]
    g_v = coeff[:, :, None] * (gmu[None, :, :] + 2.0 * gvar[None, :, :] * (v - mu[None, :, :]))
    offs_ij = offs_i.to(tl.int64)[:, None] * J + offs_j[None, :]
    for t in range(0, T):
        slot = t * N + n
        mu = parent_tile(mus_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
        diff = v - mu[None, :, :]
        if t > 0:
            gmu = parent_tile(gmus_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
            gvar = parent_tile(gvars_ptr, slot, J, D, BLOCK_J, BLOCK_D, 0.0)
            coeff = tl.load(coeff_ptr + ((t - 1) * N + n).to(tl.int64) * I * J + offs_ij, mask=mask_ij, other=0.0)
            g_v += coeff[:, :, None] * (gmu[None, :, :] + 2.0 * gvar[None, :, :] * diff)
        if t < T - 1:
            inv_var = 1.0 / variance_tile(vhats_ptr, consts_ptr, slot, J, D, BLOCK_J, BLOCK_D)
            gL = tl.load(gl_ptr + slot.to(tl.int64) * I * J + offs_ij, mask=mask_ij, other=0.0)
            g_v -= gL[:, :, None] * diff * inv_var[None, :, :]
    offs = n.to(tl.int64) * I * J * D + offs_i.to(tl.int64)[:, None, None] * (J * D) + offs_j[None, :, None] * D \
        + tl.arange(0, BLOCK_D)[None, None, :]
    tl.store(gvotes_ptr + offs, g_v.to(gvotes_ptr.dtype.element_ty), mask=mask)
