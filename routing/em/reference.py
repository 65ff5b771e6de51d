"""EM routing between matrix capsules (Hinton, Sabour & Frosst 2018, Procedure 1): the reference PyTorch math.

Per sample, with votes V_ij (D numbers; 16 for 4x4 pose matrices), child activations a_i and R_ij = 1/J:
    M-step:  R'_ij = R_ij a_i;  mu_j = sum_i R' V / sum_i R';  sigma2_j = sum_i R' (V - mu)^2 / sum_i R' + min_var
             cost_j = sum_h (beta_u + log sigma_jh) sum_i R'_ij;  a_j = logistic(lambda_t (beta_a - cost_j))
    E-step:  log R_ij = log a_j + log N(V_ij; mu_j, sigma2_j) - logsumexp over parents (skipped after the last M-step)
with lambda_t = final_lambda (1 - 0.95^(t+1)). beta_u and beta_a are learned per parent type.

Convolutional layers pass ``child_index`` [P, I]: the votes' rows are then (sample, window) pairs, P windows per
sample (window fastest), and child i of window p is the sample's child ``child_index[p, i]``. The E-step then
normalises each child's R over every parent it feeds at every window, as the authors' code does.

The votes are used parent-major, [n, J, I, D], so every sum over children is a batched matrix-vector product
(routing.batched); on the CPU rows are routed a cache-sized chunk at a time (whole samples in the convolutional
case, routing.cpu.chunking), so the only votes-sized temporary, V - mu, is chunk-sized. The autograd Function
saves R, mu, var and the logits of every iteration; its backward (routing.em.backward, with its derivation)
recomputes V - mu from the votes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.checks import refuse_second_order
from kernels.utils import accumulation_dtype
from routing.batched import agreement, parent_major, weighted_sum
from routing.cpu import chunking
from routing.cpu.memory import empty_like_on_huge_pages, new_empty_on_huge_pages
from routing.em.backward import backward_chunks, beta_gradients, child_activations

LOG_2PI = math.log(2 * math.pi)


def normalise_over_shared_children(log_num: Tensor, child_index: Tensor) -> Tensor:
    """log R from log numerators [N, J, I] when child i of row n is child child_index[n % P, i] of its sample.

    Each sample's child is normalised over all (window, parent) pairs it feeds: log R = log_num - logsumexp.
    """
    N, J, I = log_num.shape
    P = child_index.shape[0]
    B = N // P
    per_row = torch.logsumexp(log_num, dim=1).reshape(B, P * I)  # [B, P*I]
    flat = child_index.to(log_num.device).reshape(-1).expand(B, -1)
    groups = int(child_index.max()) + 1
    peak = per_row.new_full((B, groups), -math.inf).scatter_reduce(1, flat, per_row, "amax", include_self=True)
    peak = peak.detach()
    total = per_row.new_zeros(B, groups).scatter_add(1, flat, torch.exp(per_row - peak.gather(1, flat)))
    norm = (peak + torch.log(total)).gather(1, flat).reshape(N, 1, I)
    return log_num - norm


def route_chunk(
    V: Tensor,
    a: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    lambdas: list[float],
    min_var: float,
    eps: float,
    child_index: Tensor | None,
    R: Tensor,
    mu: Tensor,
    var: Tensor,
    logit: Tensor,
    work: Tensor,
) -> None:
    """EM routing of one chunk of n rows (whole samples when child_index [P, I] is given).

    V [n, J, I, D] parent-major votes; a [n, 1, I] child activations; beta_u, beta_a [1, J] or [1, 1].
    Writes, per iteration t: R [T, n, J, I] (the assignments R^t its M-step uses), mu and var [T, n, J, D]
    (var including min_var) and logit [T, n, J] (a_j = sigmoid(logit)). work [n, J, I, D]: scratch space.
    """
    n, J, I, D = V.shape
    X = work  # V - mu, then squared in place
    R_t = V.new_full((n, J, I), 1.0 / J)
    for t, lam in enumerate(lambdas):
        R[t] = R_t
        # M-step
        Rp = R_t * a  # [n, J, I]
        mass = Rp.sum(-1, keepdim=True)  # [n, J, 1]
        c = Rp / mass.clamp_min(eps)
        mu_t = weighted_sum(c, V)  # [n, J, D]
        torch.sub(V, mu_t.unsqueeze(2), out=X).square_()  # (V - mu)^2
        var_t = weighted_sum(c, X) + min_var
        log_var = torch.log(var_t)
        cost = mass.squeeze(-1) * (D * beta_u + 0.5 * log_var.sum(-1))  # sum_h (beta_u + log sigma_h) sum_i R'
        logit_t = lam * (beta_a - cost)
        mu[t], var[t], logit[t] = mu_t, var_t, logit_t
        if t == len(lambdas) - 1:
            break
        # E-step, in log space
        quad = agreement(X, 1 / var_t)  # sum_h (V - mu)^2 / var  [n, J, I]
        log_p = -0.5 * (quad + (log_var + LOG_2PI).sum(-1, keepdim=True))
        log_num = F.logsigmoid(logit_t).unsqueeze(-1) + log_p
        if child_index is None:
            R_t = log_num.softmax(dim=1)
        else:
            R_t = normalise_over_shared_children(log_num, child_index).exp()


def route_chunks(votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps, keep=None):
    """EM routing of votes [N, I, J, D] (any strides) a cache-sized chunk of rows at a time.

    Returns R [T, N, J, I], mu and var [T, N, J, D] and logit [T, N, J] of every iteration (route_chunk), in
    float32 for half-precision votes. `keep` (a contiguous [N, J, I, D] in the accumulation dtype, or None) receives
    the parent-major votes, which the backward can then read without reordering them again."""
    dtype = accumulation_dtype(votes.dtype)
    N, I, J, D = votes.shape
    T = len(lambdas)
    R = new_empty_on_huge_pages(votes, (T, N, J, I), dtype)
    mu = votes.new_empty((T, N, J, D), dtype=dtype)
    var = votes.new_empty((T, N, J, D), dtype=dtype)
    logit = votes.new_empty((T, N, J), dtype=dtype)
    bu, ba = beta_u.to(dtype).view(1, -1), beta_a.to(dtype).view(1, -1)
    group = 1 if child_index is None else child_index.shape[0]
    chunks = chunking.row_chunks(N, chunking.votes_row_bytes(votes, dtype), group, chunking.EM_CHUNK_BYTES,
                                 votes.device)
    work = votes.new_empty((chunks[0].stop, J, I, D), dtype=dtype)  # reused by every chunk
    for rows in chunks:
        V = parent_major(votes[rows], dtype) if keep is None else keep[rows].copy_(votes[rows].transpose(1, 2))
        a = child_activations(activations, rows, V)
        route_chunk(V, a, bu, ba, lambdas, min_var, eps, child_index, R[:, rows], mu[:, rows], var[:, rows],
                    logit[:, rows], work[: V.shape[0]])
    return R, mu, var, logit


class EMRoutingFunction(torch.autograd.Function):
    """(votes [N, I, J, D], activations [N, I] or None, beta_u, beta_a [J] or [1], child_index [P, I] or None)
    -> (mu [N, J, D], a_j [N, J], R [N, I, J]), routed chunk by chunk; backward in routing.em.backward."""

    @staticmethod
    def forward(ctx, votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps):
        R, mu, var, logit = route_chunks(votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps)
        ctx.save_for_backward(votes, activations, beta_u, child_index, R, mu, var, logit)
        ctx.settings = (lambdas, eps)
        ctx.beta_a_like = (beta_a.numel(), beta_a.dtype)
        out = votes.dtype
        return mu[-1].to(out), torch.sigmoid(logit[-1]).to(out), R[-1].transpose(1, 2).to(out)

    @staticmethod
    def backward(ctx, grad_mu, grad_act, grad_R):
        refuse_second_order("em", "torch")
        votes, activations, beta_u, child_index, R, mu, var, logit = ctx.saved_tensors
        lambdas, eps = ctx.settings
        # empty_like keeps the votes' strides: a parent-major caller gets a parent-major gradient, written in place
        grad_votes = empty_like_on_huge_pages(votes) if ctx.needs_input_grad[0] else None
        grad_activations = None
        if activations is not None and ctx.needs_input_grad[1]:
            grad_activations = torch.empty_like(activations)
        grad_bu, grad_ba = backward_chunks(votes, activations, beta_u, child_index, R, mu, var, logit, lambdas, eps,
                                              grad_mu, grad_act, grad_R, grad_votes, grad_activations)
        grad_beta_u, grad_beta_a = beta_gradients(grad_bu, grad_ba, beta_u, ctx.beta_a_like)
        return grad_votes, grad_activations, grad_beta_u, grad_beta_a, None, None, None, None


def route_votes(votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps):
    """EM routing of votes [N, I, J, D]: (mu [N, J, D], a_j [N, J], R [N, I, J]), differentiable in the votes,
    activations [N, I] (or None), beta_u and beta_a ([J] or [1]); child_index [P, I] (int64) or None."""
    return EMRoutingFunction.apply(votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps)
