"""The closed-form backward of EM routing (routing/em.py), for one chunk of rows: the blueprint of the kernels'.

Forward of iteration t (per row, parent j, child i, pose entry h; X_t = V - mu_t):
    Rp = R^t a;  m = sum_i Rp;  M = max(m, eps);  c = Rp / M
    mu = sum_i c V;  var = sum_i c X^2 + min_var;  cost = m (D beta_u + 1/2 sum_h log var)
    logit = lambda_t (beta_a - cost)
    log_num = logsigmoid(logit) + log_p,  log_p = -1/2 sum_h (X^2 / var + log var + log 2 pi)   (t < T-1)
    R^{t+1} = softmax_j(log_num)   (or normalised over every (window, parent) a shared child feeds)
Outputs: mu_{T-1}, sigmoid(logit_{T-1}), R^{T-1}.

Backward, t = T-1 .. 0, with G_x the gradient of the loss with respect to x. Entering iteration t we know
G_R^{t+1} (from iteration t+1; none at t = T-1), and at t = T-1 the output gradients G_mu, G_logit, G_R^{T-1}.
E-step (t < T-1):
    q = G_log_num = R^{t+1} (G_R^{t+1} - S),  S = sum_j R^{t+1} G_R^{t+1} per child (over the child's whole
        group of (window, parent) pairs in the convolutional case)
    G_logit = sigmoid(-logit) sum_i q
    G_mu = sum_i q X / var;   G_var = 1/2 (sum_i q X^2 / var - sum_i q) / var;   G_V = -q X / var
M-step:
    G_cost = -lambda_t G_logit;  G_beta_a += lambda_t G_logit;  G_beta_u += D m G_cost
    G_m = G_cost (D beta_u + 1/2 sum_h log var);   G_var += 1/2 m G_cost / var
    G_mu_tot = G_mu - 2 (1 - sum_i c) mu G_var      (var depends on mu; sum_i c = 1 unless m < eps)
    G_V += c G_mu_tot + 2 c G_var X
    G_c = <V, G_mu_tot> + <X^2, G_var> = <X, G_mu_tot> + <mu, G_mu_tot> + <X^2, G_var>
    G_Rp = G_c / M - [m >= eps] (sum_i c G_c) / M + G_m          (clamp_min passes no gradient below eps)
    G_a += sum_j G_Rp R^t;   G_R^t = G_Rp a (+ the output's G_R at t = T-1)
R^0 = 1/J is a constant, so the loop ends after the M-step of t = 0.

Numerics: everything is taken relative to X_t = V - mu_t (recomputed from the saved mu_t, var_t), never as
moments of V about 0, so nothing cancels for tiny variances; the constant <mu, G_mu_tot> is kept apart from
<X, G_mu_tot> and drops out exactly in G_Rp when sum_i c = 1. Only R^t, mu_t, var_t and logit_t (1/D of the
votes or less) are saved; the votes' gradient is accumulated over iterations in one chunk-sized buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shared_children_sum(x: Tensor, child_index: Tensor, groups: int) -> Tensor:
    """For x [N, J, I] over (row, parent, local child) with rows = (sample, window) pairs and child_index [P, I],
    the sum of x over every (window, parent, local child) of the same sample that is the same shared child,
    returned per (row, local child) as [N, 1, I]. `groups` is child_index.max() + 1."""
    N, _, I = x.shape
    P = child_index.shape[0]
    B = N // P
    flat = child_index.reshape(-1).expand(B, -1)
    total = x.new_zeros(B, groups).scatter_add_(1, flat, x.sum(1).reshape(B, P * I))
    return total.gather(1, flat).reshape(N, 1, I)


def assignments_backward(R: Tensor, grad_R: Tensor, child_index: Tensor | None, groups: int) -> Tensor:
    """Gradient of the E-step's log numerators [N, J, I] from that of R = exp(log_num - log normaliser)."""
    RG = R * grad_R
    S = RG.sum(1, keepdim=True) if child_index is None else shared_children_sum(RG, child_index, groups)
    return RG - R * S


def em_backward(
    V: Tensor,
    a: Tensor,
    R: Tensor,
    mu: Tensor,
    var: Tensor,
    logit: Tensor,
    beta_u: Tensor,
    lambdas: list[float],
    grad_mu: Tensor,
    grad_logit: Tensor,
    grad_R: Tensor | None,
    child_index: Tensor | None,
    groups: int,
    eps: float,
    grad_V: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of EM routing for one chunk of n rows (whole samples when child_index is given).

    V [n, J, I, D] parent-major votes; a [n, 1, I] child activations; saved per iteration t: R [T, n, J, I]
    (the assignments R^t of the M-step), mu, var [T, n, J, D] (var with min_var), logit [T, n, J]; beta_u
    [1, J] or [1, 1]; grad_mu [n, J, D], grad_logit [n, J] (of the last logit) and grad_R [n, J, I] or None (of
    R^{T-1}). grad_V [n, J, I, D]: the votes' gradient is written there (None: not wanted).
    Returns (grad_a [n, 1, I], grad_beta_u [n, J], grad_beta_a [n, J]), the betas' gradients per row.
    """
    T = R.shape[0]
    n, J, I, D = V.shape
    XX = V.new_empty(n, J, I, 2 * D)  # [X | X^2] with X = V - mu_t: one matrix-vector product gives both terms
    X, X2 = XX[..., :D], XX[..., D:]
    A = None if grad_V is None or T == 1 else torch.empty_like(V)  # an earlier iteration's share of grad_V
    grad_a = torch.zeros_like(a)
    grad_bu = V.new_zeros(n, J)
    grad_ba = V.new_zeros(n, J)
    g_logit, g_R_next = grad_logit, None
    for t in range(T - 1, -1, -1):
        lam, m_t, inv_var = lambdas[t], mu[t], 1 / var[t]
        torch.sub(V, m_t.unsqueeze(2), out=X)
        torch.mul(X, X, out=X2)
        Rp = R[t] * a
        mass = Rp.sum(-1, keepdim=True)  # [n, J, 1]
        M = mass.clamp_min(eps)
        c = Rp / M
        # E-step of iteration t (its output R^{t+1} fed iteration t + 1)
        if t < T - 1:
            q = assignments_backward(R[t + 1], g_R_next, child_index, groups)  # [n, J, I]
            g_logit = torch.sigmoid(-logit[t]) * q.sum(-1)
            moments = (q.unsqueeze(2) @ XX).squeeze(2)  # [sum_i q X | sum_i q X^2]  [n, J, 2D]
            g_mu = moments[..., :D] * inv_var
            g_var = 0.5 * (moments[..., D:] * inv_var - q.sum(-1, keepdim=True)) * inv_var
        else:
            q, g_mu, g_var = None, grad_mu, torch.zeros_like(m_t)
        # M-step
        g_cost = -lam * g_logit  # [n, J]
        grad_ba += lam * g_logit
        grad_bu += D * g_cost * mass.squeeze(-1)
        g_mass = g_cost * (D * beta_u + 0.5 * torch.log(var[t]).sum(-1))
        g_var = g_var + (0.5 * g_cost * mass.squeeze(-1)).unsqueeze(-1) * inv_var
        csum = mass / M
        g_mu_tot = g_mu - 2 * (1 - csum) * m_t * g_var
        g_c = (torch.cat([g_mu_tot, g_var], -1).unsqueeze(2) @ XX.transpose(-1, -2)).squeeze(2)  # [n, J, I]
        k = (m_t * g_mu_tot).sum(-1, keepdim=True)  # <mu, G_mu_tot>, the part of G_c constant over children
        kept = (mass >= eps).to(V.dtype)
        g_Rp = (g_c - kept * (c * g_c).sum(-1, keepdim=True) + k * (1 - kept * csum)) / M + g_mass.unsqueeze(-1)
        grad_a += (g_Rp * R[t]).sum(1, keepdim=True)
        g_R_next = g_Rp * a
        if t == T - 1 and grad_R is not None:
            g_R_next = g_R_next + grad_R
        if grad_V is not None:
            # G_V share: (2 c (x) G_var - q (x) 1/var) * X + c (x) G_mu_tot, a rank-2 (rank-1 at T-1) scaling of X
            # plus a rank-1 term; the last iteration writes grad_V, the earlier ones add theirs to it
            share = grad_V if t == T - 1 else A
            left = torch.stack([2 * c] if q is None else [2 * c, -q], dim=2)  # [n, J, K, I]
            right = torch.stack([g_var] if q is None else [g_var, inv_var], dim=2)  # [n, J, K, D]
            K = left.shape[2]
            flat = share.view(n * J, I, D)
            torch.bmm(left.view(n * J, K, I).transpose(1, 2), right.view(n * J, K, D), out=flat)
            share.mul_(X)
            flat.baddbmm_(c.view(n * J, I, 1), g_mu_tot.view(n * J, 1, D))
            if share is A:
                grad_V.add_(A)
    return grad_a, grad_bu, grad_ba
