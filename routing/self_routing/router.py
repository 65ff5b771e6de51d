"""The registered self-router: ``routing.create("self-routing", in_caps=I, out_caps=J, pose_dim=D)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from routing.option_checks import positive_int, real
from routing.registry import register
from routing.result import RoutingResult
from routing.router import FLOAT32_SUMS_RANGE, Router
from routing.self_routing.linear import route_poses, votes_free
from routing.self_routing.reference import route_votes

NAME = "self-routing"


@register(NAME)
class SelfRouting(Router):
    """Hahn, Pyeon & Kim 2019 self-routing (authors' code: coder3000/SR-CapsNet, modules.py SelfRouting2d).

    Not iterative: each child routes itself with learned weights, with no agreement between votes and parents.
        b_ij = <w_ij, u_ij> + beta_ij;  c_ij = softmax_j(b_ij)
        a_j = sum_i c_ij a_i / max(sum_i a_i, eps);  v_j = sum_i c_ij a_i u_ij / max(sum_i c_ij a_i, eps)
    No squash. Result: poses v [B, J, D], activations a_j [B, J] (in [0, 1] for activations in [0, 1]),
    assignments c [B, I, J] (each child's row sums to 1 over parents).

    Reparametrisation. The paper and the authors' code compute the logits from the child's pose x_i, not from its
    votes: b_ij = W_route[i, j] . x_i + bias_ij. This router computes them from the votes u_ij = W_ij x_i, with a
    learned w [in_caps, J, D] (the parameter ``weight``) and bias [in_caps, J] (``bias``): since
    <w_ij, W_ij x_i> = <W_ij^T w_ij, x_i>, this is the paper's form with W_route[i, j] = W_ij^T w_ij, the same
    family of logits wherever W_ij [D, K] has full column rank (D >= K, as in every layer here). Working from the
    votes is what lets the router take votes (ClassCaps hands over votes with coordinates added, which have no
    pose-and-transform form) and makes ``router(votes)`` and ``router(poses, transforms=W)`` agree; the latter
    computes W_ij^T w_ij once and never forms the votes (routing.self_routing.linear). Both parameters start at
    0, as the authors', so the untrained router routes uniformly: c_ij = 1/J, a_j = 1/J and v_j the activation-
    weighted mean of the votes.

    Options: in_caps, out_caps, pose_dim (required: the sizes of the learned parameters; the capsule layers pass
    them, routing.testing.check_router fills them from the votes' shape). Votes with I = m * in_caps children use
    row i % in_caps for child i (ClassCaps' children are position-major, type-minor); J must be out_caps and D
    pose_dim. eps (1e-8): lower bound of both denominators, sum_i a_i and sum_i c_ij a_i (the authors' code has
    none); results are exact wherever they exceed it.

    Children's activations a_i weight each vote in both sums, as in the paper; with None they are ones, so
    a_j = sum_i c_ij / I and v_j = sum_i c_ij u_ij / sum_i c_ij. They are meant to be probabilities; they must be >= 0.

    Convolutional layers: defined per window, as the authors' SelfRouting2d. ConvCaps routes each window as its
    own row (this router takes no child_index): the sums run over one window's K*K*in_types children, with
    routing weights per (kernel position, child type) (in_caps = K*K*in_types) shared over output positions.
    Half-precision inputs are routed in float32, results returned in their dtype.
    """

    normalisation = "parents"
    activation_range = (0.0, None)  # weights of the votes in both sums
    float32_range = FLOAT32_SUMS_RANGE
    child_parameters = True

    def __init__(
        self,
        *,
        in_caps: int | None = None,
        out_caps: int | None = None,
        pose_dim: int | None = None,
        eps: float = 1e-8,
    ):
        super().__init__()
        given = {"in_caps": in_caps, "out_caps": out_caps, "pose_dim": pose_dim}
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(f"self-routing learns routing weights [in_caps, out_caps, pose_dim] and biases "
                             f"[in_caps, out_caps]: the options in_caps, out_caps and pose_dim are required, missing "
                             f"{', '.join(missing)}")
        self.in_caps, self.out_caps, self.pose_dim = (positive_int(NAME, k, v) for k, v in given.items())
        self.eps = real(NAME, "eps", eps)
        self.weight = nn.Parameter(torch.empty(in_caps, out_caps, pose_dim))
        self.bias = nn.Parameter(torch.empty(in_caps, out_caps))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zeros, as the authors' code: the untrained router routes uniformly (c_ij = 1/J)."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def check_sizes(self, children: int, parents: int, pose_dim: int) -> None:
        """Votes [., I, J, D] must have I = m * in_caps, J = out_caps and D = pose_dim."""
        if children % self.in_caps or parents != self.out_caps or pose_dim != self.pose_dim:
            raise ValueError(
                f"self-routing was built with in_caps={self.in_caps}, out_caps={self.out_caps}, "
                f"pose_dim={self.pose_dim}, so votes [B, I, J, D] must have I a multiple of {self.in_caps}, "
                f"J = {self.out_caps} and D = {self.pose_dim}; got I={children}, J={parents}, D={pose_dim}"
            )

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        self.check_sizes(*votes.shape[1:])
        return RoutingResult(*route_votes(votes, activations, self.weight, self.bias, self.eps))

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """Routes without forming the votes where K <= D outside autocast (routing.self_routing.linear); else
        forms them, then routes."""
        I, J, D, _ = transforms.shape
        self.check_sizes(I, J, D)
        if votes_free(poses, transforms):
            return RoutingResult(*route_poses(poses, transforms, activations, self.weight, self.bias, self.eps))
        return super().route_linear(poses, transforms, activations)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, in_caps={self.in_caps}, out_caps={self.out_caps}, "
                f"pose_dim={self.pose_dim}, eps={self.eps}")
