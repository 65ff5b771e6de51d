"""EM routing between matrix capsules (Hinton, Sabour & Frosst 2018, Procedure 1): the reference PyTorch backend.

Per sample, with votes V_ij (D numbers; 16 for 4x4 pose matrices), child activations a_i and R_ij = 1/J:
    M-step:  R'_ij = R_ij a_i;  mu_j = sum_i R' V / sum_i R';  sigma2_j = sum_i R' (V - mu)^2 / sum_i R' + min_var
             cost_j = sum_h (beta_u + log sigma_jh) sum_i R'_ij;  a_j = logistic(lambda_t (beta_a - cost_j))
    E-step:  log R_ij = log a_j + log N(V_ij; mu_j, sigma2_j) - logsumexp over parents (skipped after the last M-step)
with lambda_t = final_lambda (1 - 0.95^(t+1)). beta_u and beta_a are learned per parent type.

Convolutional layers pass ``child_index`` [P, I]: the votes' rows are then (sample, window) pairs, P windows per
sample (window fastest), and child i of window p is the sample's child ``child_index[p, i]``. The E-step then
normalises each child's R over every parent it feeds at every window, as the authors' code does.

Speed: rows are routed a cache-sized chunk at a time (whole samples in the convolutional case), with the votes
as parent-major [n, J, I, D] so every sum over children is a batched matrix-vector product; the only
votes-sized temporary, V - mu, is chunk-sized. The backward is written out (routing/em_backward.py, with its
derivation): it saves R, mu, var and the logits of every iteration and recomputes V - mu from the votes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from routing.chunking import row_chunks, votes_row_bytes
from routing.dynamic import agreement, check_iterations, compute_dtype, parent_major, weighted_sum
from routing.em_backward import em_backward
from routing.linear_fusion import fusable
from routing.memory import empty_like_on_huge_pages, new_empty_on_huge_pages
from routing.registry import register
from routing.result import RoutingResult
from routing.router import Router

LOG_2PI = math.log(2 * math.pi)

# Votes bytes per chunk of rows. EM keeps about four chunk-sized buffers live (the votes, V - mu_{T-1},
# (V - mu_t)^2 and the votes' gradient). A sweep of 1..16 MiB at [512, 144, 16, 16], one thread, on a 2-core AMD
# EPYC shared with other jobs found 2 MiB fastest; with 2 threads and the fused layers (routing.linear_fusion),
# forward + backward, medians of 7: the ConvCaps layer 6x6 -> 4x4, K=3, 16 -> 16 types, B=32 (2.4 MiB of votes
# per sample) took 200-203 ms with 1 sample per chunk (<= 4 MiB), 173-187 with 2 or 3 (5-8 MiB), 183-190 with 4
# (10 MiB), 221 at 20 MiB; EM routing alone at [512, 144, 16, 16] 175-235 ms at 2 MiB, 137-143 at 6 MiB; the
# compact model's class layer (B=128, 196 -> 10) 48-49 ms at 2 MiB, 38-40 at 4-8 MiB.
EM_CHUNK_BYTES = 6 * 2**20


def inverse_temperatures(iterations: int, final_lambda: float) -> list[float]:
    """lambda_t = final_lambda (1 - 0.95^(t+1)) for t = 0..T-1 (0.0005, 0.000975, 0.00143 for 0.01, T = 3)."""
    return [final_lambda * (1 - 0.95 ** (t + 1)) for t in range(iterations)]


def check_child_index(child_index: Tensor, rows: int, children: int) -> Tensor:
    """child_index must be an integer tensor [P, I] with P dividing the number of votes' rows."""
    if not isinstance(child_index, Tensor) or child_index.ndim != 2 or child_index.dtype.is_floating_point:
        raise ValueError("child_index must be an integer tensor [P, I] (window p, local child i -> sample's child)")
    P, I = child_index.shape
    if I != children or rows % P != 0:
        raise ValueError(
            f"child_index has shape [{P}, {I}] but votes have {rows} rows of {children} children; expected "
            f"[P, {children}] with P dividing {rows} (rows are sample-major, window-minor)"
        )
    if child_index.numel() and int(child_index.min()) < 0:
        raise ValueError("child_index must be non-negative")
    return child_index.long()


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


def em_forward(
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


def em_route_chunks(votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps, keep=None):
    """EM routing of votes [N, I, J, D] (any strides) a cache-sized chunk of rows at a time.

    Returns R [T, N, J, I], mu and var [T, N, J, D] and logit [T, N, J] of every iteration (em_forward), in
    float32 for half-precision votes. `keep` (a contiguous [N, J, I, D] in the compute dtype, or None) receives
    the parent-major votes, which the backward can then read without reordering them again."""
    dtype = compute_dtype(votes.dtype)
    N, I, J, D = votes.shape
    T = len(lambdas)
    R = new_empty_on_huge_pages(votes, (T, N, J, I), dtype)
    mu = votes.new_empty((T, N, J, D), dtype=dtype)
    var = votes.new_empty((T, N, J, D), dtype=dtype)
    logit = votes.new_empty((T, N, J), dtype=dtype)
    bu, ba = beta_u.to(dtype).view(1, -1), beta_a.to(dtype).view(1, -1)
    group = 1 if child_index is None else child_index.shape[0]
    chunks = row_chunks(N, votes_row_bytes(votes, dtype), group, EM_CHUNK_BYTES, votes.device)
    work = votes.new_empty((chunks[0].stop, J, I, D), dtype=dtype)  # reused by every chunk
    for rows in chunks:
        V = parent_major(votes[rows], dtype) if keep is None else keep[rows].copy_(votes[rows].transpose(1, 2))
        a = child_activations(activations, rows, V)
        em_forward(V, a, bu, ba, lambdas, min_var, eps, child_index, R[:, rows], mu[:, rows], var[:, rows],
                   logit[:, rows], work[: V.shape[0]])
    return R, mu, var, logit


def em_backward_chunks(votes, activations, beta_u, child_index, R, mu, var, logit, lambdas, eps, grad_mu, grad_act,
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
    chunks = row_chunks(N, votes_row_bytes(votes, dtype), group, EM_CHUNK_BYTES, votes.device)
    work = R.new_empty((3, chunks[0].stop, J, I, D))  # scratch and, for other layouts, the gradient's chunk
    for rows in chunks:
        V = parent_major(votes[rows], dtype)
        n = V.shape[0]
        a = child_activations(activations, rows, V)
        target = None if grad_votes is None else grad_votes[rows].transpose(1, 2)  # [n, J, I, D]
        direct = target is not None and target.is_contiguous() and target.dtype == dtype
        gV = target if direct else (None if target is None else work[2, :n])
        g_a, grad_bu[rows], grad_ba[rows] = em_backward(
            V, a, R[:, rows], mu[:, rows], var[:, rows], logit[:, rows], bu, lambdas, g_mu[rows], g_logit[rows],
            None if g_R is None else g_R[rows], child_index, groups, eps, gV, work[:2, :n])
        if target is not None and not direct:
            target.copy_(gV)
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


class _EMRoutingFunction(torch.autograd.Function):
    """(votes [N, I, J, D], activations [N, I] or None, beta_u, beta_a [J] or [1], child_index [P, I] or None)
    -> (mu [N, J, D], a_j [N, J], R [N, I, J]), routed chunk by chunk; backward in routing/em_backward.py."""

    @staticmethod
    def forward(ctx, votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps):
        R, mu, var, logit = em_route_chunks(votes, activations, beta_u, beta_a, child_index, lambdas, min_var, eps)
        ctx.save_for_backward(votes, activations, beta_u, child_index, R, mu, var, logit)
        ctx.settings = (lambdas, eps)
        ctx.beta_a_like = (beta_a.numel(), beta_a.dtype)
        out = votes.dtype
        return mu[-1].to(out), torch.sigmoid(logit[-1]).to(out), R[-1].transpose(1, 2).to(out)

    @staticmethod
    def backward(ctx, grad_mu, grad_act, grad_R):
        votes, activations, beta_u, child_index, R, mu, var, logit = ctx.saved_tensors
        lambdas, eps = ctx.settings
        # empty_like keeps the votes' strides: a parent-major caller gets a parent-major gradient, written in place
        grad_votes = empty_like_on_huge_pages(votes) if ctx.needs_input_grad[0] else None
        grad_activations = None
        if activations is not None and ctx.needs_input_grad[1]:
            grad_activations = torch.empty_like(activations)
        grad_bu, grad_ba = em_backward_chunks(votes, activations, beta_u, child_index, R, mu, var, logit, lambdas, eps,
                                              grad_mu, grad_act, grad_R, grad_votes, grad_activations)
        grad_beta_u, grad_beta_a = beta_gradients(grad_bu, grad_ba, beta_u, ctx.beta_a_like)
        return grad_votes, grad_activations, grad_beta_u, grad_beta_a, None, None, None, None


def child_activations(activations: Tensor | None, rows: slice, V: Tensor) -> Tensor:
    """Activations of the rows' children as [n, 1, I] in V's dtype (ones when None)."""
    if activations is None:
        return V.new_ones(V.shape[0], 1, V.shape[2])
    return activations[rows].to(V.dtype).unsqueeze(1)


@register("em")
class EMRouting(Router):
    """Hinton et al. 2018 EM routing.

    Options: iterations (3); out_caps (number of parent types J: beta_u and beta_a are learned per parent type;
    None shares one of each across all parents); final_lambda (0.01, the inverse temperature of the last
    iteration); min_var (added to every variance); eps (lower bound of sum_i R' in the divisions).
    ``forward(votes [B, I, J, D], activations [B, I] or None (ones), child_index=None)``.
    Result: poses mu [B, J, D], activations a_j [B, J] in (0, 1), assignments R [B, I, J] used by the last M-step.
    """

    def __init__(
        self,
        *,
        iterations: int = 3,
        out_caps: int | None = None,
        final_lambda: float = 0.01,
        min_var: float = 1e-4,
        eps: float = 1e-8,
    ):
        super().__init__()
        self.iterations = check_iterations(iterations)
        if out_caps is not None and (isinstance(out_caps, bool) or not isinstance(out_caps, int) or out_caps < 1):
            raise ValueError(f"out_caps must be a positive integer or None, got {out_caps!r}")
        if not final_lambda > 0:
            raise ValueError(f"final_lambda must be > 0, got {final_lambda!r}")
        if not min_var >= 0 or not eps > 0:
            raise ValueError(f"min_var must be >= 0 and eps > 0, got min_var={min_var!r}, eps={eps!r}")
        self.out_caps = out_caps
        self.final_lambda = float(final_lambda)
        self.min_var = float(min_var)
        self.eps = float(eps)
        self.beta_u = nn.Parameter(torch.zeros(out_caps or 1))
        self.beta_a = nn.Parameter(torch.zeros(out_caps or 1))

    def check_parents(self, parents: int) -> None:
        """The votes' (or transforms') number of parents J must be out_caps when that was given."""
        if self.out_caps is not None and parents != self.out_caps:
            raise ValueError(f"em routing was built with out_caps={self.out_caps} but votes have J={parents} "
                             "parents")

    def call_settings(
        self, rows: int, children: int, parents: int, child_index: Tensor | None, device: torch.device
    ) -> tuple[Tensor | None, list[float]]:
        """Check one call's shape (N rows of I children, J parents) against out_caps and child_index; returns
        child_index (int64, on `device`, or None) and the iterations' inverse temperatures."""
        self.check_parents(parents)
        if child_index is not None:
            child_index = check_child_index(child_index, rows, children).to(device)
        return child_index, inverse_temperatures(self.iterations, self.final_lambda)

    def route(
        self, votes: Tensor, activations: Tensor | None = None, child_index: Tensor | None = None
    ) -> RoutingResult:
        N, I, J, D = votes.shape
        child_index, lambdas = self.call_settings(N, I, J, child_index, votes.device)
        mu, act, R = _EMRoutingFunction.apply(votes, activations, self.beta_u, self.beta_a, child_index, lambdas,
                                              self.min_var, self.eps)
        return RoutingResult(mu, act, R)

    def route_linear(
        self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None,
        child_index: Tensor | None = None,
    ) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.em_linear); elsewhere formed, then routed."""
        from routing.em_linear import route_linear  # (it builds on this module)

        if not (self.routes_in_torch(poses) and fusable(poses, transforms, activations, self.beta_u, self.beta_a)):
            return super().route_linear(poses, transforms, activations, child_index=child_index)
        N, I = poses.shape[:2]
        child_index, lambdas = self.call_settings(N, I, transforms.shape[1], child_index, poses.device)
        return RoutingResult(*route_linear(poses, transforms, activations, self.beta_u, self.beta_a, child_index,
                                           lambdas, self.min_var, self.eps))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, iterations={self.iterations}, out_caps={self.out_caps}, "
                f"final_lambda={self.final_lambda}, min_var={self.min_var}")
