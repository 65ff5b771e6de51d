"""The registered variational Bayes router: ``routing.create("variational-bayes", out_caps=J)``, the PyTorch
backend, with beta_u and beta_a."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from routing.cpu.fusion import fusable
from routing.option_checks import positive_int, real
from routing.registry import register
from routing.result import RoutingResult
from routing.router import FLOAT32_SQUARES_RANGE, Router
from routing.variational_bayes.backward import Priors
from routing.variational_bayes.linear import route_poses
from routing.variational_bayes.reference import route_votes

NAME = "variational-bayes"


@register("variational-bayes")
class VariationalBayesRouting(Router):
    """Ribeiro, Leontidis & Kollias, "Capsule Routing via Variational Bayes" (AAAI 2020), diagonal precision.

    Each parent is a Gaussian mixture component with a Dirichlet(alpha0) prior on the mixing weights and a
    Normal-Wishart prior on its mean and diagonal precision (m0 = 0, kappa0, Psi0 = psi0 I, nu0); the equations
    are in routing.variational_bayes.reference. Checked against the authors' code, fabio-deep/Variational-
    Capsule-Routing ``src/vb_routing.py`` (VariationalBayesRouting2d: update_qparam, update_qlatent, forward), in
    the two versions stored: commit 1482128 (no kernel_size argument) and commit 9908079 (kernel_size, stride).

    Options: iterations (3); out_caps (number of parent types J: beta_u and beta_a are learned per parent type,
    starting at 0 as the authors'; None shares one of each across all parents); alpha0 (1.0), kappa0 (1.0),
    psi0 (1.0, the diagonal of Psi0), nu0 (None: D + 1; must be > D - 1, checked per call since D comes from the
    votes); eps (1e-8, lower bound of N_j = sum_i R'_ij where it divides).
    Result: poses m_j [B, J, D] (posterior means), activations a_j = sigmoid(beta_a - (exp(E[ln pi_j]) H_j +
    beta_u)) [B, J], assignments R [B, I, J] used by the last parameter update (each child's row sums to 1 over
    the J parents: normalisation "parents"). Children's activations, when given, weight each child's assignments
    (R'_ij = R_ij a_i), as in the authors' code, and must be >= 0; None means ones. No per-child parameters. Votes
    beyond float32's reach for squares (routing.router.FLOAT32_SQUARES_RANGE) are routed in float64.

    Convolutional layers: defined per window. ConvCaps routes each window as its own row (``route`` takes no
    child_index), a child's assignments summing to 1 over the parents of that window.

    Deviations from the authors' code:
    - No batch normalisation: the authors pass a_j's logit and the poses m_j through BatchNorm without affine
      parameters (BN_a, BN_v) before the sigmoid; that mixes the samples of a batch, and this library routes
      every sample independently, so it is left out (a layer after the router may normalise instead).
    - Assignments: R_ij = softmax over j of (E[ln pi_j] + ln p_ij), computed in log space. Commit 9908079 has
      this numerator, exp(E[ln pi_j] + ln p_ij), normalised in linear space (sum clamped at 1e-8) over every
      (window, parent) a child feeds, which in a dense layer is this softmax; commit 1482128 computes
      ln p_ij - logsumexp_j(E[ln pi_j] + ln p_ij), whose numerator lacks E[ln pi_j], so its rows do not sum to 1.
      Per window, as said above, not over the windows a child feeds.
    - invPsi_j = Psi0 + sum_i R'_ij (V_ij - mu_j)^2 + (kappa0 N_j / kappa_j) mu_j^2: the authors' active diagonal
      line has (N_j / kappa_j) mu_j^2 ("priors removed", the same at kappa0 = 1, the only value they use); their
      commented-out general line and their full-covariance branch have kappa0 N_j / kappa_j (mu_j - m0)^2, which
      is what this kappa0 option follows (the Normal-Wishart update), with m0 = 0.
    - mu_j divides by max(N_j, eps) (the authors divide by N_j unguarded, NaN when a parent gets no mass).
    - D is the votes' size (the authors use max(2, P*P) for P x P poses); the digamma offsets d run over
      0..D-1, as their diga_arg = arange(D); m0 = 0 and Psi0 = psi0 I are not learned or given as tensors.
    Half-precision votes are routed in float32 and the results returned in their dtype.
    """

    normalisation = "parents"
    activation_range = (0.0, None)  # weights of the assignments: N_j = sum_i R_ij a_i must stay >= 0
    # the squared deviations in invPsi overflow float32 from |V| ~ 1e18
    float32_range = FLOAT32_SQUARES_RANGE
    child_parameters = False

    def __init__(
        self,
        *,
        iterations: int = 3,
        out_caps: int | None = None,
        alpha0: float = 1.0,
        kappa0: float = 1.0,
        psi0: float = 1.0,
        nu0: float | None = None,
        eps: float = 1e-8,
    ):
        super().__init__()
        self.iterations = positive_int(NAME, "iterations", iterations)
        self.out_caps = positive_int(NAME, "out_caps", out_caps, allow_none=True)
        self.alpha0 = real(NAME, "alpha0", alpha0)
        self.kappa0 = real(NAME, "kappa0", kappa0)
        self.psi0 = real(NAME, "psi0", psi0)
        self.nu0 = None if nu0 is None else real(NAME, "nu0 (None: D + 1)", nu0)
        self.eps = real(NAME, "eps", eps)
        self.beta_u = nn.Parameter(torch.zeros(out_caps or 1))
        self.beta_a = nn.Parameter(torch.zeros(out_caps or 1))

    def priors(self, parents: int, D: int) -> Priors:
        """Check one call's J and D against out_caps and nu0; the options with nu0 resolved (D + 1 when None)."""
        if self.out_caps is not None and parents != self.out_caps:
            raise ValueError(f"variational-bayes routing was built with out_caps={self.out_caps} but the votes "
                             f"have J={parents} parents")
        nu0 = D + 1.0 if self.nu0 is None else self.nu0
        if not nu0 > D - 1:
            raise ValueError(f"variational-bayes routing: nu0 must be > D - 1 = {D - 1} for votes of size D={D} "
                             f"(the Wishart's degrees of freedom), got nu0={self.nu0}")
        return Priors(self.iterations, self.alpha0, self.kappa0, self.psi0, nu0, self.eps)

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        priors = self.priors(votes.shape[2], votes.shape[3])
        return RoutingResult(*route_votes(votes, activations, self.beta_u, self.beta_a, priors))

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.variational_bayes.linear); elsewhere formed,
        then routed."""
        if not (self.routes_in_torch(poses) and fusable(poses, transforms, activations, self.beta_u, self.beta_a)):
            return super().route_linear(poses, transforms, activations)
        priors = self.priors(transforms.shape[1], transforms.shape[2])
        return RoutingResult(*route_poses(poses, transforms, activations, self.beta_u, self.beta_a, priors))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, iterations={self.iterations}, out_caps={self.out_caps}, "
                f"alpha0={self.alpha0}, kappa0={self.kappa0}, psi0={self.psi0}, nu0={self.nu0}, eps={self.eps}")
