"""The registered dynamic router: ``routing.create("dynamic", iterations=3)``, the PyTorch backend."""

from __future__ import annotations

from torch import Tensor

from kernels.checks import check_iterations
from routing.cpu.fusion import fusable
from routing.dynamic.linear import route_poses
from routing.dynamic.reference import route_votes
from routing.registry import register
from routing.result import RoutingResult
from routing.router import Router
from routing.squash import SQUASH_EPS


@register("dynamic")
class DynamicRouting(Router):
    """Sabour et al. 2017 routing by agreement.

    Options: iterations (default 3); detach_inner (default False: gradients flow through every iteration, as
    in the authors' code; True: the iterations that only update the logits see detached votes and activations,
    so gradients flow through the last weighted sum only); eps (squash epsilon).
    Result: poses v [B, J, D] (squashed), activations |v| [B, J], assignments c [B, I, J] of the last iteration,
    a softmax over parents (each child's row sums to 1).
    """

    normalisation = "parents"

    def __init__(self, *, iterations: int = 3, detach_inner: bool = False, eps: float = SQUASH_EPS):
        super().__init__()
        self.iterations = check_iterations(iterations)
        self.detach_inner = bool(detach_inner)
        self.exact_gradients = not self.detach_inner  # detach_inner's gradient is a surrogate by design
        self.eps = float(eps)

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        return RoutingResult(*route_votes(votes, activations, self.iterations, self.detach_inner, self.eps))

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.dynamic.linear); elsewhere formed, then routed."""
        if self.routes_in_torch(poses) and fusable(poses, transforms, activations):
            return RoutingResult(*route_poses(poses, transforms, activations, self.iterations, self.detach_inner,
                                              self.eps))
        return super().route_linear(poses, transforms, activations)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iterations={self.iterations}, detach_inner={self.detach_inner}"
