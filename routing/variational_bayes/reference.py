"""Variational Bayes routing (Ribeiro, Leontidis & Kollias, AAAI 2020), diagonal precision: the reference PyTorch
math.

Each parent j is a component of a Gaussian mixture over its votes, with a Dirichlet(alpha0) prior on the mixing
weights and a Normal-Wishart prior on its mean and (diagonal) precision (m0 = 0, kappa0, Psi0 = psi0 I, nu0).
Per row (a sample, or one window of a convolutional layer), with votes V_ij (D numbers), child activations a_i
(ones when not given) and R_ij = 1/J, iterations t = 0..T-1:
    M-step:  R'_ij = R_ij a_i;  N_j = sum_i R'_ij;  mu_j = sum_i R'_ij V_ij / max(N_j, eps)
             alpha_j = alpha0 + N_j;  kappa_j = kappa0 + N_j;  nu_j = nu0 + N_j;  m_j = N_j mu_j / kappa_j
             P_jd = psi0 + sum_i R'_ij (V_ijd - mu_jd)^2 + (kappa0 N_j / kappa_j) mu_jd^2       (P = invPsi_j)
             E[ln pi_j] = digamma(alpha_j) - digamma(sum_j alpha_j)
             E[ln |Lambda_j|] = sum_{d=0}^{D-1} digamma((nu_j - d) / 2) + D ln 2 - sum_d ln P_jd
    E-step (skipped after the last M-step):
             E_q_ij = D / kappa_j + nu_j sum_d (V_ijd - m_jd)^2 / P_jd
             ln p_ij = E[ln |Lambda_j|] / 2 - D ln(2 pi) / 2 - E_q_ij / 2
             R_ij = softmax over parents j of (E[ln pi_j] + ln p_ij)          (in log space)
Outputs: poses m_j; activations a_j = sigmoid(beta_a - (exp(E[ln pi_j]) H_j + beta_u)) with the posterior entropy
H_j = D ln(2 pi e) / 2 - E[ln |Lambda_j|] / 2; assignments R used by the last M-step.

The E-step's V - m is taken as X + delta with X = V - mu (the M-step's centred votes) and delta = mu - m =
(kappa0 / kappa_j) mu, so sum_d (V - m)^2 / P = <X^2, 1/P> + 2 <X, delta / P> + <delta^2, 1/P> costs two
batched products over the squares and centred votes the M-step formed anyway. Nothing large cancels: the squares
are of deviations from the mean, and delta^2 / P <= kappa0 / (kappa_j N_j) since P >= (kappa0 N_j / kappa_j) mu^2,
so the expansion's rounding is of the order of the float epsilon times (the value itself + kappa0 / (kappa_j N_j)).

The votes are used parent-major, [n, J, I, D] (routing.batched); on the CPU rows are routed a cache-sized chunk at
a time (routing.cpu.chunking), so the two votes-sized temporaries (V - mu and its square) are chunk-sized. The
autograd Function saves R, mu and P of every iteration (1/D of the votes or less); its backward
(routing.variational_bayes.backward, with the derivation) forms the centred votes again from the votes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.checks import refuse_second_order
from kernels.utils import accumulation_dtype
from routing.batched import agreement, parent_major, weighted_sum
from routing.cpu import chunking
from routing.cpu.memory import empty_like_on_huge_pages, new_empty_on_huge_pages
from routing.variational_bayes.backward import (
    CHUNK_BYTES,
    LN2PI,
    Priors,
    backward_chunks,
    child_activations,
    output_logit,
    posterior,
    wishart_offsets,
)


def route_chunk(
    V: Tensor,
    a: Tensor | None,
    beta_u: Tensor,
    beta_a: Tensor,
    priors: Priors,
    R: Tensor,
    mu: Tensor,
    P: Tensor,
    poses: Tensor,
    logit: Tensor,
    work: Tensor,
) -> None:
    """Variational Bayes routing of one chunk of n rows.

    V [n, J, I, D] parent-major votes; a [n, 1, I] child activations or None (ones); beta_u, beta_a [1, J] or
    [1, 1]. Writes, per iteration t: R [T, n, J, I] (the assignments R^t its M-step uses), mu and P [T, n, J, D];
    and the outputs poses m [n, J, D] and logit [n, J] (a_j = sigmoid(logit)). work [2, n, J, I, D]: scratch.
    """
    n, J, I, D = V.shape
    X, X2 = work[0], work[1]  # V - mu, (V - mu)^2
    offsets = wishart_offsets(D, V)
    R_t = V.new_full((n, J, I), 1.0 / J)
    for t in range(priors.iterations):
        R[t] = R_t
        Rp = R_t if a is None else R_t * a
        N = Rp.sum(-1)  # [n, J]
        mu_t = weighted_sum(Rp, V) / N.clamp_min(priors.eps).unsqueeze(-1)  # [n, J, D]
        torch.sub(V, mu_t.unsqueeze(2), out=X)
        torch.mul(X, X, out=X2)
        S = weighted_sum(Rp, X2)  # sum_i R' (V - mu)^2
        g = priors.kappa0 / (priors.kappa0 + N)
        P_t = priors.psi0 + S + (g * N).unsqueeze(-1) * mu_t.square()
        mu[t], P[t] = mu_t, P_t
        post = posterior(N, P_t, priors, offsets)
        if t == priors.iterations - 1:
            poses.copy_((N / post.kappa).unsqueeze(-1) * mu_t)
            logit.copy_(output_logit(post, beta_u, beta_a, D))
            break
        # E-step in log space: -nu/2 sum_d (V - m)^2 / P with V - m = X + delta, as
        # <X^2, s2> + <X, s1> + <delta^2, s2> with s2 = -nu / (2 P), s1 = 2 s2 delta
        delta = g.unsqueeze(-1) * mu_t
        s2 = (-0.5 * post.nu).unsqueeze(-1) / P_t
        s1 = 2.0 * s2 * delta
        per_parent = (post.Elnpi + 0.5 * post.Elnlambda - 0.5 * D * LN2PI - 0.5 * D / post.kappa
                      + (s2 * delta.square()).sum(-1))  # [n, J]
        logits = agreement(X2, s2)  # [n, J, I]
        logits.view(n * J, 1, I).baddbmm_(s1.view(n * J, 1, D), X.view(n * J, I, D).transpose(1, 2))
        R_t = (logits + per_parent.unsqueeze(-1)).softmax(dim=1)  # over parents


def route_chunks(
    votes: Tensor, activations: Tensor | None, beta_u: Tensor, beta_a: Tensor, priors: Priors,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Variational Bayes routing of votes [N, I, J, D] (any strides) a cache-sized chunk of rows at a time.

    Returns R [T, N, J, I], mu and P [T, N, J, D] of every iteration and the outputs m [N, J, D], logit [N, J]
    (route_chunk), in float32 for half-precision votes. `keep` (a contiguous [N, J, I, D] in the accumulation
    dtype, or None) receives the parent-major votes, which the backward can then read without reordering them."""
    dtype = accumulation_dtype(votes.dtype)
    N, I, J, D = votes.shape
    T = priors.iterations
    R = new_empty_on_huge_pages(votes, (T, N, J, I), dtype)
    mu = votes.new_empty((T, N, J, D), dtype=dtype)
    P = votes.new_empty((T, N, J, D), dtype=dtype)
    poses = votes.new_empty((N, J, D), dtype=dtype)
    logit = votes.new_empty((N, J), dtype=dtype)
    bu, ba = beta_u.to(dtype).view(1, -1), beta_a.to(dtype).view(1, -1)
    chunks = chunking.row_chunks(N, chunking.votes_row_bytes(votes, dtype), 1, CHUNK_BYTES, votes.device)
    work = votes.new_empty((2, chunks[0].stop, J, I, D), dtype=dtype)  # reused by every chunk
    # the routing runs in the accumulation dtype: under autocast its products would be half-precision
    with torch.autocast(votes.device.type, enabled=False):
        for rows in chunks:
            V = parent_major(votes[rows], dtype) if keep is None else keep[rows].copy_(votes[rows].transpose(1, 2))
            a = child_activations(activations, rows, dtype)
            route_chunk(V, a, bu, ba, priors, R[:, rows], mu[:, rows], P[:, rows], poses[rows], logit[rows],
                        work[:, : V.shape[0]])
    return R, mu, P, poses, logit


class VariationalBayesRoutingFunction(torch.autograd.Function):
    """(votes [N, I, J, D], activations [N, I] or None, beta_u, beta_a [J] or [1], priors) -> (m [N, J, D],
    a_j [N, J], R [N, I, J]), routed chunk by chunk; backward in routing.variational_bayes.backward."""

    @staticmethod
    def forward(ctx, votes, activations, beta_u, beta_a, priors):
        R, mu, P, poses, logit = route_chunks(votes, activations, beta_u, beta_a, priors)
        act = torch.sigmoid(logit)
        ctx.save_for_backward(votes, activations, beta_u, beta_a, R, mu, P, act)
        ctx.priors = priors
        out = votes.dtype
        return poses.to(out), act.to(out), R[-1].transpose(1, 2).to(out)

    @staticmethod
    def backward(ctx, grad_poses, grad_act, grad_R):
        refuse_second_order("variational-bayes", "torch")
        votes, activations, beta_u, beta_a, R, mu, P, act = ctx.saved_tensors
        # empty_like keeps the votes' strides: a parent-major caller gets a parent-major gradient, written in place
        grad_votes = empty_like_on_huge_pages(votes) if ctx.needs_input_grad[0] else None
        grad_activations = None
        if activations is not None and ctx.needs_input_grad[1]:
            grad_activations = torch.empty_like(activations)
        grad_beta_u, grad_beta_a = backward_chunks(votes, activations, beta_u, beta_a, R, mu, P, act, ctx.priors,
                                                   grad_poses, grad_act, grad_R, grad_votes, grad_activations)
        return grad_votes, grad_activations, grad_beta_u, grad_beta_a, None


def route_votes(votes: Tensor, activations: Tensor | None, beta_u: Tensor, beta_a: Tensor, priors: Priors
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Variational Bayes routing of votes [N, I, J, D]: (m [N, J, D], a_j [N, J], R [N, I, J]), differentiable in
    the votes, the activations [N, I] (or None) and beta_u, beta_a ([J] or [1])."""
    return VariationalBayesRoutingFunction.apply(votes, activations, beta_u, beta_a, priors)

