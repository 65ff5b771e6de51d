"""The registered EM router: ``routing.create("em", out_caps=J)``, the PyTorch backend, with beta_u and beta_a."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kernels.checks import check_child_index
from kernels.em.schedule import inverse_temperatures
from routing.cpu.fusion import fusable
from routing.em.linear import route_poses
from routing.em.reference import route_votes
from routing.option_checks import positive_int, real
from routing.registry import register
from routing.result import RoutingResult
from routing.router import FLOAT32_SQUARES_RANGE, Router


@register("em")
class EMRouting(Router):
    """Hinton et al. 2018 EM routing.

    Options: iterations (3); out_caps (number of parent types J: beta_u and beta_a are learned per parent type;
    None shares one of each across all parents); final_lambda (0.01, the inverse temperature of the last
    iteration); min_var (> 0, added to every variance); eps (lower bound of sum_i R' in the divisions).
    ``forward(votes [B, I, J, D], activations [B, I] or None (ones), child_index=None)``; the activations are the
    probabilities that the children are present and must lie in [0, 1]. Votes beyond float32's reach for squares
    (routing.router.FLOAT32_SQUARES_RANGE) are routed in float64.
    Result: poses mu [B, J, D], activations a_j [B, J] in (0, 1), assignments R [B, I, J] used by the last M-step
    (each child's row sums to 1 over parents; with child_index, over every (window, parent) pair it feeds).
    """

    normalisation = "parents"
    activation_range = (0.0, 1.0)  # probabilities that the children are present
    # (V - mu)^2 and its sums overflow float32 from |V| ~ 1e18, and the backward's 1/var^2 terms from less
    float32_range = FLOAT32_SQUARES_RANGE

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
        self.iterations = positive_int("em", "iterations", iterations)
        self.out_caps = positive_int("em", "out_caps", out_caps, allow_none=True)
        self.final_lambda = real("em", "final_lambda", final_lambda)
        self.min_var = real("em", "min_var", min_var)  # 0 would give log(0) for a parent whose votes agree
        self.eps = real("em", "eps", eps)
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
        return RoutingResult(*route_votes(votes, activations, self.beta_u, self.beta_a, child_index, lambdas,
                                          self.min_var, self.eps))

    def route_linear(
        self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None,
        child_index: Tensor | None = None,
    ) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.em.linear); elsewhere formed, then routed."""
        if not (self.routes_in_torch(poses) and fusable(poses, transforms, activations, self.beta_u, self.beta_a)):
            return super().route_linear(poses, transforms, activations, child_index=child_index)
        N, I = poses.shape[:2]
        child_index, lambdas = self.call_settings(N, I, transforms.shape[1], child_index, poses.device)
        return RoutingResult(*route_poses(poses, transforms, activations, self.beta_u, self.beta_a, child_index,
                                          lambdas, self.min_var, self.eps))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, iterations={self.iterations}, out_caps={self.out_caps}, "
                f"final_lambda={self.final_lambda}, min_var={self.min_var}")
