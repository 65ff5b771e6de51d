"""The closed-form backward of EM routing (routing.em.reference), a chunk of rows at a time: the blueprint of the
kernels'.

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

Numerics: everything is taken relative to the parents' means (recomputed from the saved mu_t, var_t), never as
moments of V about 0, so nothing cancels for tiny variances: the squares X_t^2 exactly, the linear terms about
X_{T-1} (see backward_chunk); the constant <mu, G_mu_tot> is kept apart and drops out exactly in G_Rp when
sum_i c = 1. Only R^t, mu_t, var_t and logit_t (1/D of the votes or less) are saved; the votes' gradient is
written once per chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.batched import agreement, low_rank_times_centred, parent_major, votes_gradient_chunk
from routing.cpu import chunking


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


def backward_chunk(
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
    work: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of EM routing for one chunk of n rows (whole samples when child_index is given).

    V [n, J, I, D] parent-major votes; a [n, 1, I] child activations; saved per iteration t: R [T, n, J, I]
    (the assignments R^t of the M-step), mu, var [T, n, J, D] (var with min_var), logit [T, n, J]; beta_u
    [1, J] or [1, 1]; grad_mu [n, J, D], grad_logit [n, J] (of the last logit) and grad_R [n, J, I] or None (of
    R^{T-1}). grad_V [n, J, I, D]: the votes' gradient is written there (None: not wanted). work [2, n, J, I, D]:
    scratch space. Returns (grad_a [n, 1, I], grad_beta_u [n, J], grad_beta_a [n, J]), the betas' gradients
    per row.

    Terms linear in X_t = V - mu_t are taken about one frame X = V - mu_{T-1} (X_t = X + d_t with
    d_t = mu_{T-1} - mu_t), so the votes are read once per iteration for them and the votes' gradient is written
    once, as (sum_t A_t) * X + low-rank; the squares X_t^2 are formed exactly for every t. In float32 the frame
    shift costs a relative error of about 6e-8 |d_t| / |X_t| in the linear terms (d_t is how far a parent's
    mean moved between iterations, against its spread); nothing of the size of mu cancels.
    """
    T = R.shape[0]
    n, J, I, D = V.shape
    X, X2 = work[0], work[1]  # V - mu_{T-1};  (V - mu_t)^2
    torch.sub(V, mu[T - 1].unsqueeze(2), out=X)
    grad_a = torch.zeros_like(a)
    grad_bu = V.new_zeros(n, J)
    grad_ba = V.new_zeros(n, J)
    lefts, scales, shifts = [], [], []  # grad_V = sum_k left_k (x) (scale_k * X + shift_k)
    g_logit, g_R_next = grad_logit, None
    for t in range(T - 1, -1, -1):
        lam, m_t, inv_var = lambdas[t], mu[t], 1 / var[t]
        d = mu[T - 1] - m_t  # X_t = X + d
        torch.sub(V, m_t.unsqueeze(2), out=X2).square_()
        Rp = R[t] * a
        mass = Rp.sum(-1, keepdim=True)  # [n, J, 1]
        M = mass.clamp_min(eps)
        c = Rp / M
        # E-step of iteration t (its output R^{t+1} fed iteration t + 1)
        if t < T - 1:
            q = assignments_backward(R[t + 1], g_R_next, child_index, groups)  # [n, J, I]
            Q = q.sum(-1, keepdim=True)
            g_logit = torch.sigmoid(-logit[t]) * Q.squeeze(-1)
            qX = (q.unsqueeze(2) @ X).squeeze(2) + Q * d  # sum_i q X_t  [n, J, D]
            qX2 = (q.unsqueeze(2) @ X2).squeeze(2)  # sum_i q X_t^2
            g_mu = qX * inv_var
            g_var = 0.5 * (qX2 * inv_var - Q) * inv_var
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
        # <X_t, G_mu_tot> + <X_t^2, G_var>  [n, J, I]
        g_c = agreement(X, g_mu_tot) + (d * g_mu_tot).sum(-1, keepdim=True) + agreement(X2, g_var)
        k = (m_t * g_mu_tot).sum(-1, keepdim=True)  # <mu, G_mu_tot>, the part of G_c constant over children
        kept = (mass >= eps).to(V.dtype)
        g_Rp = (g_c - kept * (c * g_c).sum(-1, keepdim=True) + k * (1 - kept * csum)) / M + g_mass.unsqueeze(-1)
        grad_a += (g_Rp * R[t]).sum(1, keepdim=True)
        g_R_next = g_Rp * a
        if t == T - 1 and grad_R is not None:
            g_R_next = g_R_next + grad_R
        # G_V share (2 c (x) G_var - q (x) 1/var) * X_t + c (x) G_mu_tot, with X_t = X + d
        lefts.append(2 * c)
        scales.append(g_var)
        shifts.append(0.5 * g_mu_tot + g_var * d)
        if q is not None:
            lefts.append(-q)
            scales.append(inv_var)
            shifts.append(inv_var * d)
    if grad_V is not None:
        low_rank_times_centred(lefts, scales, shifts, X, grad_V)
    return grad_a, grad_bu, grad_ba


def backward_chunks(votes, activations, beta_u, child_index, R, mu, var, logit, lambdas, eps, grad_mu, grad_act,
                    grad_R, grad_votes, grad_activations):
    """The EM routing backward, a chunk of rows at a time, from the saved R, mu, var, logit [T, N, ...] and the
    gradients of the outputs (mu [N, J, D], a_j [N, J], R [N, I, J]; any may be None). Writes the votes'
    gradient into grad_votes (any strides; it may share the votes' memory when they are not parent-major, since
    each chunk is then copied out before its gradient is written) and the activations' into grad_activations
    (either may be None); returns the gradients of beta_u and beta_a per row, [N, J] each."""
    dtype = R.dtype
    N, I, J, D = votes.shape
    g_mu = torch.zeros_like(mu[-1]) if grad_mu is None else grad_mu.to(dtype)
    act = torch.sigmoid(logit[-1])
    g_logit = torch.zeros_like(act) if grad_act is None else grad_act.to(dtype) * act * (1 - act)
    g_R = None if grad_R is None else grad_R.to(dtype).transpose(1, 2)
    bu = beta_u.to(dtype).view(1, -1)
    group = 1 if child_index is None else child_index.shape[0]
    groups = 0 if child_index is None else int(child_index.max()) + 1
    grad_bu, grad_ba = R.new_zeros(N, J), R.new_zeros(N, J)
    chunks = chunking.row_chunks(N, chunking.votes_row_bytes(votes, dtype), group, chunking.EM_CHUNK_BYTES,
                                 votes.device)
    work = R.new_empty((3, chunks[0].stop, J, I, D))  # scratch and, for other layouts, the gradient's chunk
    for rows in chunks:
        V = parent_major(votes[rows], dtype)
        n = V.shape[0]
        a = child_activations(activations, rows, V)
        gV, copy_to = votes_gradient_chunk(grad_votes, rows, dtype, work[2, :n])
        g_a, grad_bu[rows], grad_ba[rows] = backward_chunk(
            V, a, R[:, rows], mu[:, rows], var[:, rows], logit[:, rows], bu, lambdas, g_mu[rows], g_logit[rows],
            None if g_R is None else g_R[rows], child_index, groups, eps, gV, work[:2, :n])
        if copy_to is not None:
            copy_to.copy_(gV)
        if grad_activations is not None:
            grad_activations[rows] = g_a.squeeze(1)
    return grad_bu, grad_ba


def beta_gradients(grad_bu: Tensor, grad_ba: Tensor, beta_u: Tensor, beta_a_like: tuple[int, torch.dtype]):
    """Per-row gradients [N, J] summed into those of beta_u and beta_a (per parent type, or one shared)."""
    J = grad_bu.shape[1]
    grad_beta_u = grad_bu.sum(0) if beta_u.numel() == J else grad_bu.sum().reshape(1)
    beta_a_size, beta_a_dtype = beta_a_like
    grad_beta_a = grad_ba.sum(0) if beta_a_size == J else grad_ba.sum().reshape(1)
    return grad_beta_u.to(beta_u.dtype), grad_beta_a.to(beta_a_dtype)


def child_activations(activations: Tensor | None, rows: slice, V: Tensor) -> Tensor:
    """Activations of the rows' children as [n, 1, I] in V's dtype (ones when None)."""
    if activations is None:
        return V.new_ones(V.shape[0], 1, V.shape[2])
    return activations[rows].to(V.dtype).unsqueeze(1)
