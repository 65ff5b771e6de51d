"""EM routing between matrix capsules (Hinton, Sabour & Frosst 2018, Procedure 1): the reference PyTorch backend.

Per sample, with votes V_ij (D numbers; 16 for 4x4 pose matrices), child activations a_i and R_ij = 1/J:
    M-step:  R'_ij = R_ij a_i;  mu_j = sum_i R' V / sum_i R';  sigma2_j = sum_i R' (V - mu)^2 / sum_i R' + min_var
             cost_j = sum_h (beta_u + log sigma_jh) sum_i R'_ij;  a_j = logistic(lambda_t (beta_a - cost_j))
    E-step:  log R_ij = log a_j + log N(V_ij; mu_j, sigma2_j) - logsumexp over parents (skipped after the last M-step)
with lambda_t = final_lambda (1 - 0.95^(t+1)). beta_u and beta_a are learned per parent type.

Convolutional layers pass ``child_index`` [P, I]: the votes' rows are then (sample, window) pairs, P windows per
sample (window fastest), and child i of window p is the sample's child ``child_index[p, i]``. The E-step then
normalises each child's R over every parent it feeds at every window, as the authors' code does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from routing.dynamic import agreement, check_iterations, compute_dtype, parent_major
from routing.registry import register
from routing.result import RoutingResult
from routing.router import Router

LOG_2PI = math.log(2 * math.pi)


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

    def check_parents(self, votes: Tensor) -> None:
        J = votes.shape[2]
        if self.out_caps is not None and J != self.out_caps:
            raise ValueError(f"em routing was built with out_caps={self.out_caps} but votes have J={J} parents")

    def route(
        self, votes: Tensor, activations: Tensor | None = None, child_index: Tensor | None = None
    ) -> RoutingResult:
        self.check_parents(votes)
        N, I, J, D = votes.shape
        if child_index is not None:
            child_index = check_child_index(child_index, N, I)
        dtype = compute_dtype(votes.dtype)
        V = parent_major(votes, dtype)  # [N, J, I, D]
        a_in = (torch.ones(N, 1, I, dtype=dtype, device=votes.device) if activations is None
                else activations.to(dtype).unsqueeze(1))  # [N, 1, I]
        beta_u = self.beta_u.to(dtype).view(1, -1, 1)  # [1, J or 1, 1]
        beta_a = self.beta_a.to(dtype).view(1, -1)
        R = V.new_full((N, J, I), 1.0 / J)
        lambdas = inverse_temperatures(self.iterations, self.final_lambda)
        for t, lam in enumerate(lambdas):
            # M-step
            Rp = R * a_in  # [N, J, I]
            mass = Rp.sum(-1, keepdim=True)  # [N, J, 1]
            coeff = (Rp / mass.clamp_min(self.eps)).unsqueeze(2)  # [N, J, 1, I]
            mu = coeff @ V  # [N, J, 1, D]
            diff2 = (V - mu).square()  # [N, J, I, D]
            var = (coeff @ diff2).squeeze(2) + self.min_var  # [N, J, D]
            cost = ((beta_u + 0.5 * torch.log(var)) * mass).sum(-1)  # [N, J]
            logit = lam * (beta_a - cost)
            if t == self.iterations - 1:
                break
            # E-step, in log space
            quad = agreement(diff2, 1 / var)  # sum_h (V - mu)^2 / var  [N, J, I]
            log_p = -0.5 * (quad + (torch.log(var) + LOG_2PI).sum(-1, keepdim=True))
            log_num = F.logsigmoid(logit).unsqueeze(-1) + log_p
            if child_index is None:
                R = log_num.softmax(dim=1)
            else:
                R = normalise_over_shared_children(log_num, child_index).exp()
        out = votes.dtype
        return RoutingResult(mu.squeeze(2).to(out), torch.sigmoid(logit).to(out), R.transpose(1, 2).to(out))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, iterations={self.iterations}, out_caps={self.out_caps}, "
                f"final_lambda={self.final_lambda}, min_var={self.min_var}")
