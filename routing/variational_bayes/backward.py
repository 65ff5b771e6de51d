"""The closed-form backward of variational Bayes routing (routing.variational_bayes.reference), a chunk of rows at a
time, and the posterior formulas the forward and backward share.

Forward of iteration t (per row, parent j, child i, pose entry d; X_t = V - mu_t; k0, n0, a0, psi0 the priors):
    Rp = R^t a;  N = sum_i Rp;  M = max(N, eps);  c = Rp / M;  mu = sum_i c V;  S = sum_i Rp X^2
    kappa = k0 + N;  nu = n0 + N;  alpha = a0 + N;  g = k0 / kappa;  P = psi0 + S + g N mu^2
    L = sum_{d<D} digamma((nu - d) / 2) + D ln 2 - sum_d ln P;  Epi = digamma(alpha) - digamma(sum_j alpha)
    E-step (t < T-1), delta = g mu (so V - m = X + delta), w = 1/P:
        quad = sum_d w (X + delta)^2;  logit = Epi + L/2 - D ln(2 pi)/2 - D/(2 kappa) - nu quad / 2
        R^{t+1} = softmax_j(logit)
    Outputs (t = T-1): m = (N / kappa) mu;  z = beta_a - exp(Epi) H - beta_u, H = D ln(2 pi e)/2 - L/2;
        a_j = sigmoid(z);  R^{T-1}.

Backward, t = T-1 .. 0, G_x the gradient of the loss with respect to x. Entering iteration t we know G_R^{t+1}
(from iteration t+1), or at t = T-1 the output gradients G_m, G_z = G_a a_j (1 - a_j) and G_R^{T-1}:
    t = T-1:  G_Epi = -G_z exp(Epi) H;  G_L = G_z exp(Epi) / 2;  G_mu = (N / kappa) G_m;
              G_N = (k0 / kappa^2) <G_m, mu>;  G_beta_a += G_z;  G_beta_u -= G_z
    t < T-1:  q = R^{t+1} (G_R^{t+1} - sum_j R^{t+1} G_R^{t+1});  Q = sum_i q
              Z1 = sum_i q X_t;  Z2 = sum_i q X_t^2;  U = sum_i q (X_t + delta)^2 = Z2 + 2 delta Z1 + delta^2 Q
              G_Epi = Q;  G_L = Q / 2;  G_kappa = D Q / (2 kappa^2);  G_nu = -<w, U> / 2;  G_P = nu U w^2 / 2
              G_delta = -nu w (Z1 + delta Q) (= sum_i G_Y, G_Y = -nu q w (X_t + delta));
              G_g = <G_delta, mu>;  G_mu = (g - 1) G_delta   (delta = g mu, and X_t = V - mu)
    Both:     G_alpha = trigamma(alpha) G_Epi - trigamma(sum_j alpha) sum_j G_Epi
              G_nu += G_L sum_{d<D} trigamma((nu - d) / 2) / 2;   G_P -= G_L w;   G_S = G_P
              G_g += N <G_P, mu^2>;  G_N += g <G_P, mu^2>;  G_mu += 2 g N G_P mu;  G_kappa -= G_g g / kappa
              G_N += G_kappa + G_nu + G_alpha
              G_mu_tot = G_mu - 2 (M - N) G_S mu        (sum_i Rp X_t = (M - N) mu: zero unless N < eps)
              G_Rp = <X_t, G_mu_tot> / M + [N < eps] <mu, G_mu_tot> / M + <X_t^2, G_S> + G_N
              G_a += sum_j G_Rp R^t;   G_R^t = G_Rp a (+ the output's G_R at t = T-1)
              G_V += c G_mu_tot + 2 Rp G_S X_t + G_Y
R^0 = 1/J is a constant, so the loop ends after the M-step of t = 0.

Numerics (as routing.em.backward): terms linear in X_t are taken about one frame X = V - mu_{T-1}
(X_t = X + d_t, d_t = mu_{T-1} - mu_t), so the votes' gradient is written once per chunk as
sum_k left_k (x) (scale_k X + shift_k); the squares X_t^2 are formed exactly for every t, and nothing of the size
of mu cancels (<V, G_mu_tot> is split into <X_t, G_mu_tot> and the constant <mu, G_mu_tot>, which drops out
exactly when N >= eps). Only R^t, mu_t and P_t are saved.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from routing.batched import agreement, low_rank_times_centred, parent_major, votes_gradient_chunk
from routing.cpu import chunking

LN2 = math.log(2.0)
LN2PI = math.log(2.0 * math.pi)
# Votes bytes per chunk of rows: EM's setting (routing.cpu.chunking.EM_CHUNK_BYTES), as this routing keeps as many
# chunk-sized buffers live (the parent-major votes, V - mu, its square, the votes' gradient).
CHUNK_BYTES = chunking.EM_CHUNK_BYTES


class Priors(NamedTuple):
    """The options of one call: iterations T, the priors (nu0 resolved to a number) and eps, the bound on N_j."""

    iterations: int
    alpha0: float
    kappa0: float
    psi0: float
    nu0: float
    eps: float


class Posterior(NamedTuple):
    """Per-row, per-parent quantities of one M-step, each [n, J]: N = sum_i R'; M = max(N, eps); kappa, nu, alpha;
    g = kappa0 / kappa; Elnpi = E[ln pi_j]; Elnlambda = E[ln |Lambda_j|]."""

    N: Tensor
    M: Tensor
    kappa: Tensor
    nu: Tensor
    alpha: Tensor
    g: Tensor
    Elnpi: Tensor
    Elnlambda: Tensor


def wishart_offsets(D: int, like: Tensor) -> Tensor:
    """d = 0..D-1, the offsets in the digamma arguments (nu - d) / 2 of E[ln |Lambda|] (the authors' diga_arg)."""
    return torch.arange(D, dtype=like.dtype, device=like.device)


def posterior(N: Tensor, P: Tensor, priors: Priors, offsets: Tensor) -> Posterior:
    """The posterior's per-parent quantities from N [n, J] and P [n, J, D] (the diagonal of invPsi)."""
    D = P.shape[-1]
    kappa = priors.kappa0 + N
    nu = priors.nu0 + N
    alpha = priors.alpha0 + N
    Elnpi = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
    Elnlambda = torch.digamma(0.5 * (nu.unsqueeze(-1) - offsets)).sum(-1) + D * LN2 - torch.log(P).sum(-1)
    return Posterior(N, N.clamp_min(priors.eps), kappa, nu, alpha, priors.kappa0 / kappa, Elnpi, Elnlambda)


def entropy(Elnlambda: Tensor, D: int) -> Tensor:
    """H_j = D ln(2 pi e) / 2 - E[ln |Lambda_j|] / 2, the posterior entropy the parent's activation comes from."""
    return 0.5 * D * (LN2PI + 1.0) - 0.5 * Elnlambda


def output_logit(post: Posterior, beta_u: Tensor, beta_a: Tensor, D: int) -> Tensor:
    """z = beta_a - (exp(E[ln pi_j]) H_j + beta_u); the parent's activation is sigmoid(z)."""
    return beta_a - (torch.exp(post.Elnpi) * entropy(post.Elnlambda, D) + beta_u)


def child_activations(activations: Tensor | None, rows: slice, dtype: torch.dtype) -> Tensor | None:
    """Activations of the rows' children as [n, 1, I] in `dtype`, or None (ones)."""
    return None if activations is None else activations[rows].to(dtype).unsqueeze(1)


def backward_chunk(
    V: Tensor,
    a: Tensor | None,
    R: Tensor,
    mu: Tensor,
    P: Tensor,
    priors: Priors,
    grad_m: Tensor,
    grad_z: Tensor,
    grad_R: Tensor | None,
    grad_V: Tensor | None,
    work: Tensor,
) -> Tensor | None:
    """Backward of variational Bayes routing for one chunk of n rows.

    V [n, J, I, D] parent-major votes; a [n, 1, I] child activations or None (ones); saved per iteration t:
    R [T, n, J, I] (the assignments R^t of the M-step), mu, P [T, n, J, D]; grad_m [n, J, D] and grad_z [n, J]
    (of the output poses and of the activations' logit z), grad_R [n, J, I] or None (of R^{T-1}). grad_V
    [n, J, I, D]: the votes' gradient is written there (None: not wanted). work [2, n, J, I, D]: scratch space.
    Returns the activations' gradient [n, 1, I] (None when a is None).
    """
    T = R.shape[0]
    n, J, I, D = V.shape
    k0 = priors.kappa0
    X, X2 = work[0], work[1]  # V - mu_{T-1};  (V - mu_t)^2
    torch.sub(V, mu[T - 1].unsqueeze(2), out=X)
    grad_a = None if a is None else torch.zeros_like(a)
    # the per-parent quantities of every iteration at once, [T, n, J] (few small operations per chunk)
    Rp_all = R if a is None else R * a
    post_all = posterior(Rp_all.sum(-1), P, priors, wishart_offsets(D, V))
    w_all = 1.0 / P
    c_all = Rp_all / post_all.M.unsqueeze(-1)
    tri_alpha = torch.polygamma(1, post_all.alpha)
    tri_alpha_sum = torch.polygamma(1, post_all.alpha.sum(-1, keepdim=True))
    tri_nu = 0.5 * torch.polygamma(1, 0.5 * (post_all.nu.unsqueeze(-1) - wishart_offsets(D, V))).sum(-1)
    lefts, scales, shifts = [], [], []  # grad_V = sum_k left_k (x) (scale_k * X + shift_k)
    g_R_next = None
    for t in range(T - 1, -1, -1):
        m_t, P_t, w, c = mu[t], P[t], w_all[t], c_all[t]
        d = mu[T - 1] - m_t  # X_t = X + d
        if t == T - 1:
            torch.mul(X, X, out=X2)
        else:
            torch.sub(V, m_t.unsqueeze(2), out=X2).square_()
        N, M, kappa, nu, g = (post_all.N[t], post_all.M[t], post_all.kappa[t], post_all.nu[t], post_all.g[t])
        q = None
        if t < T - 1:  # the E-step whose output R^{t+1} fed iteration t + 1
            R_next = R[t + 1]
            RG = R_next * g_R_next
            q = RG - R_next * RG.sum(1, keepdim=True)  # gradient of the logits [n, J, I]
            Q = q.sum(-1)  # [n, J]
            delta = g.unsqueeze(-1) * m_t
            Z1 = (q.unsqueeze(2) @ X).squeeze(2) + Q.unsqueeze(-1) * d  # sum_i q X_t  [n, J, D]
            Z2 = (q.unsqueeze(2) @ X2).squeeze(2)  # sum_i q X_t^2
            U = Z2 + 2.0 * delta * Z1 + delta.square() * Q.unsqueeze(-1)  # sum_i q (X_t + delta)^2
            g_Epi, g_L = Q, 0.5 * Q
            g_kappa = 0.5 * D * Q / kappa.square()
            g_nu = -0.5 * (w * U).sum(-1)
            g_P = 0.5 * nu.unsqueeze(-1) * U * w.square()
            g_delta = -nu.unsqueeze(-1) * w * (Z1 + delta * Q.unsqueeze(-1))
            g_g = (g_delta * m_t).sum(-1)
            g_mu = (g - 1.0).unsqueeze(-1) * g_delta
            g_N = torch.zeros_like(N)
        else:  # the outputs m = (N / kappa) mu and z
            e = torch.exp(post_all.Elnpi[t])
            g_Epi = -grad_z * e * entropy(post_all.Elnlambda[t], D)
            g_L = 0.5 * grad_z * e
            g_kappa = g_nu = g_g = torch.zeros_like(N)
            g_P = torch.zeros_like(P_t)
            g_mu = (N / kappa).unsqueeze(-1) * grad_m
            g_N = k0 / kappa.square() * (grad_m * m_t).sum(-1)
        g_alpha = tri_alpha[t] * g_Epi - tri_alpha_sum[t] * g_Epi.sum(-1, keepdim=True)
        g_nu = g_nu + g_L * tri_nu[t]
        g_S = g_P - g_L.unsqueeze(-1) * w  # = G_P
        mu2 = m_t.square()
        g_Smu2 = (g_S * mu2).sum(-1)
        g_g = g_g + N * g_Smu2
        g_N = g_N + g * g_Smu2
        g_mu = g_mu + (2.0 * g * N).unsqueeze(-1) * g_S * m_t
        g_kappa = g_kappa - g_g * g / kappa
        g_N = g_N + g_kappa + g_nu + g_alpha
        g_mu_tot = g_mu - (2.0 * (M - N)).unsqueeze(-1) * g_S * m_t
        # G_Rp = <X_t, G_mu_tot> / M + [N < eps] <mu, G_mu_tot> / M + <X_t^2, G_S> + G_N
        low = (N < priors.eps).to(V.dtype)
        per_parent = ((d * g_mu_tot).sum(-1) + low * (m_t * g_mu_tot).sum(-1)) / M + g_N  # [n, J]
        g_Rp = agreement(X, g_mu_tot / M.unsqueeze(-1))  # [n, J, I]
        g_Rp.view(n * J, 1, I).baddbmm_(g_S.view(n * J, 1, D), X2.view(n * J, I, D).transpose(1, 2))
        g_Rp += per_parent.unsqueeze(-1)
        if grad_a is not None:
            grad_a += (g_Rp * R[t]).sum(1, keepdim=True)
        g_R_next = g_Rp if a is None else g_Rp * a
        if t == T - 1 and grad_R is not None:
            g_R_next = g_R_next + grad_R
        # G_V share: c (x) (2 M G_S X_t + G_mu_tot) - nu q (x) w (X_t + delta), with X_t = X + d
        two_MS = 2.0 * M.unsqueeze(-1) * g_S
        lefts.append(c)
        scales.append(two_MS)
        shifts.append(two_MS * d + g_mu_tot)
        if q is not None:
            lefts.append(-nu.unsqueeze(-1) * q)
            scales.append(w)
            shifts.append(w * (d + delta))
    if grad_V is not None:
        low_rank_times_centred(lefts, scales, shifts, X, grad_V)
    return grad_a


def backward_chunks(votes, activations, beta_u, beta_a, R, mu, P, act, priors, grad_poses, grad_act, grad_R,
                    grad_votes, grad_activations):
    """The backward a chunk of rows at a time, from the saved R, mu, P [T, N, ...], the output activations
    act [N, J] and the gradients of the outputs (m [N, J, D], a_j [N, J], R [N, I, J]; any may be None). Writes
    the votes' gradient into grad_votes (any strides) and the activations' into grad_activations (either may be
    None); returns the gradients of beta_u and beta_a (their shapes and dtypes)."""
    dtype = R.dtype
    N, I, J, D = votes.shape
    g_m = torch.zeros_like(mu[-1]) if grad_poses is None else grad_poses.to(dtype)
    g_z = torch.zeros_like(act) if grad_act is None else grad_act.to(dtype) * act * (1 - act)
    g_R = None if grad_R is None else grad_R.to(dtype).transpose(1, 2)
    chunks = chunking.row_chunks(N, chunking.votes_row_bytes(votes, dtype), 1, CHUNK_BYTES, votes.device)
    work = R.new_empty((3, chunks[0].stop, J, I, D))  # scratch and, for other layouts, the gradient's chunk
    with torch.autocast(votes.device.type, enabled=False):  # in the accumulation dtype, as the forward
        for rows in chunks:
            V = parent_major(votes[rows], dtype)
            n = V.shape[0]
            a = child_activations(activations, rows, dtype)
            gV, copy_to = votes_gradient_chunk(grad_votes, rows, dtype, work[2, :n])
            g_a = backward_chunk(V, a, R[:, rows], mu[:, rows], P[:, rows], priors, g_m[rows], g_z[rows],
                                 None if g_R is None else g_R[rows], gV, work[:2, :n])
            if copy_to is not None:
                copy_to.copy_(gV)
            if grad_activations is not None:
                grad_activations[rows] = g_a.squeeze(1)
    return beta_gradients(g_z, beta_u, beta_a)


def beta_gradients(grad_z: Tensor, beta_u: Tensor, beta_a: Tensor) -> tuple[Tensor, Tensor]:
    """z = beta_a - ... - beta_u: the gradients of beta_u and beta_a ([J] per parent type, or [1] shared) from
    that of z [N, J]."""
    per_parent = grad_z.sum(0)
    grad_ba = per_parent if beta_a.numel() == per_parent.numel() else per_parent.sum().reshape(1)
    grad_bu = per_parent if beta_u.numel() == per_parent.numel() else per_parent.sum().reshape(1)
    return (-grad_bu).to(beta_u.dtype), grad_ba.to(beta_a.dtype)
