"""The registered dynamic router: ``routing.create("dynamic", iterations=3)``, the PyTorch backend."""

from __future__ import annotations

from torch import Tensor

from routing.cpu.fusion import fusable
from routing.dynamic.linear import route_poses
from routing.dynamic.reference import route_votes, route_votes_twice_differentiable
from routing.option_checks import flag, positive_int, real
from routing.registry import register
from routing.result import RoutingResult
from routing.router import FLOAT32_SUMS_RANGE, Router
from routing.squash import SQUASH_EPS


@register("dynamic")
class DynamicRouting(Router):
    """Sabour et al. 2017 routing by agreement.

    Options: iterations (default 3); detach_inner (default False: gradients flow through every iteration, as
    in the authors' code; True: the iterations that only update the logits see detached votes and activations,
    so gradients flow through the last weighted sum only); eps (squash epsilon); double_backward (default False:
    a written-out backward that saves 1/D of the votes and refuses second-order gradients; True: plain PyTorch
    autograd, which keeps votes-sized temporaries but is differentiable twice, for gradient penalties and
    Hessian-vector products).
    Activations, when given, weight the votes in the sums and must be >= 0.
    Result: poses v [B, J, D] (squashed), activations |v| [B, J], assignments c [B, I, J] of the last iteration,
    a softmax over parents (each child's row sums to 1).
    """

    normalisation = "parents"
    activation_range = (0.0, None)  # weights of the votes in the sums
    float32_range = FLOAT32_SUMS_RANGE  # squash is safe for any finite s; the sums of votes near 3e38 are not

    def __init__(self, *, iterations: int = 3, detach_inner: bool = False, eps: float = SQUASH_EPS,
                 double_backward: bool = False):
        super().__init__()
        self.iterations = positive_int("dynamic", "iterations", iterations)
        self.detach_inner = flag("dynamic", "detach_inner", detach_inner)
        self.exact_gradients = not self.detach_inner  # detach_inner's gradient is a surrogate by design
        self.eps = real("dynamic", "eps", eps)
        self.double_backward = flag("dynamic", "double_backward", double_backward)

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        route = route_votes_twice_differentiable if self.double_backward else route_votes
        return RoutingResult(*route(votes, activations, self.iterations, self.detach_inner, self.eps))

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.dynamic.linear); elsewhere formed, then routed."""
        if self.routes_in_torch(poses) and fusable(poses, transforms, activations) and not self.double_backward:
            return RoutingResult(*route_poses(poses, transforms, activations, self.iterations, self.detach_inner,
                                              self.eps))
        return super().route_linear(poses, transforms, activations)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, iterations={self.iterations}, detach_inner={self.detach_inner}"
                + (", double_backward=True" if self.double_backward else ""))
