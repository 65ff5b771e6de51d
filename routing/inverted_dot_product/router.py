"""The registered inverted dot-product router: ``routing.create("inverted-dot-product", pose_dim=D)``, PyTorch."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from routing.cpu.fusion import fusable
from routing.inverted_dot_product.linear import route_poses
from routing.inverted_dot_product.reference import route_votes
from routing.option_checks import positive_int, real
from routing.registry import register
from routing.result import RoutingResult
from routing.router import FLOAT32_SQUARES_RANGE, Router

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, as the authors' nn.LayerNorm(out_d_capsules)
# The authors' main_capsule.py defaults --num_routing to 1 (only the uniform pass: no agreement at all), but their
# README asks for a number > 1 and runs and reports CIFAR-10 (94.85 % mean, 95.14 % best) and CIFAR-100 with
# --num_routing 2 (apple/ml-capsules-inverted-attention-routing, README.md and main_capsule.py): 2 is the default.
DEFAULT_ITERATIONS = 2
NAME = "inverted-dot-product"


@register("inverted-dot-product")
class InvertedDotProductRouting(Router):
    """Tsai, Srivastava, Goh & Salakhutdinov 2020, inverted dot-product attention routing (authors' code:
    apple/ml-capsules-inverted-attention-routing, src/layers.py, CapsuleFC and CapsuleCONV).

    T = iterations passes (the authors' num_routing, counting the uniform first pass):
        pass 1:       r_ij = 1/J (softmax over parents of zeros)
        passes 2..T:  r_ij = softmax over parents j of <u_ij, v_j> / sqrt(D), with v_j of the previous pass
        every pass:   v_j = LayerNorm(sum_i r_ij a_i u_ij)
    The LayerNorm runs over the pose dimension D with a learned weight [D] (1 at start) and bias [D] (0 at start)
    shared by all parents, as the authors' nn.LayerNorm(out_d_capsules); with D = 1 it is left out, as in their
    code. The children's activations a_i are not part of the authors' routing: when given they weight each vote
    in the sum over children (this library's convention, as dynamic routing; so they must be >= 0); with None
    (ones) the result is the authors' equations exactly. In the authors' models all layers route concurrently (each
    pass of a layer uses the next layer's poses from the previous pass); this router iterates one layer locally,
    which is their
    sequential_routing mode. Left out of the authors' layer: its dropout on the parent sums (their default rate is
    0), and the division of the softmax by (its sum + 1e-10), which changes the coefficients by about 1e-10.

    The one addition: the algorithm has no output activations, and the authors turn the class poses into class
    logits with one linear map D -> 1 shared by all classes (nn.Linear(caps_dim, 1) in src/capsule_model.py).
    The router learns that map, head weight w [D] and bias b [1], and returns activation_j = sigmoid(<w, v_j> + b)
    in (0, 1), so the library's activation-based losses apply. w starts normal with std 1/sqrt(D) and b at 0:
    v_j leaves the LayerNorm with zero mean and unit variance over D (|v_j|^2 ~ D), so <w, v_j> starts with unit
    variance, the sigmoid neither saturated nor the same for every parent, and with w != 0 the losses' gradient
    reaches the poses (a zero w would block it there).

    Options: iterations (default 2; the authors' README runs with num_routing 2, their argparse default of 1 is
    the uniform pass alone); pose_dim (required: D, the size of the LayerNorm and head parameters, which the
    capsule layers pass); eps (the LayerNorm's epsilon, default 1e-5 as torch's).
    Result: poses v [B, J, D], activations sigmoid(<w, v_j> + b) [B, J], assignments r [B, I, J] of the last pass,
    a softmax over parents (each child's row sums to 1). No parameters per child or per parent type, so the
    routing of a convolutional layer (ConvCaps) is defined per window: each window is routed on its own.
    """

    normalisation = "parents"
    activation_range = (0.0, None)  # weights of the votes in the sums
    # the LayerNorm's variance squares the sums' deviations, and with D = 1 (no LayerNorm) <u, v> multiplies votes
    float32_range = FLOAT32_SQUARES_RANGE
    child_parameters = False

    def __init__(self, *, iterations: int = DEFAULT_ITERATIONS, pose_dim: int | None = None,
                 eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.iterations = positive_int(NAME, "iterations", iterations)
        if pose_dim is None:
            raise ValueError(f"{NAME} routing needs pose_dim, the pose size D of its LayerNorm and head parameters "
                             "(the capsule layers pass it; routing.create(..., pose_dim=16))")
        self.pose_dim = positive_int(NAME, "pose_dim", pose_dim)
        self.eps = real(NAME, "eps (the LayerNorm epsilon)", eps)
        self.norm_weight = nn.Parameter(torch.ones(pose_dim))
        self.norm_bias = nn.Parameter(torch.zeros(pose_dim))
        self.head_weight = nn.Parameter(torch.empty(pose_dim))
        self.head_bias = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LayerNorm weight 1 and bias 0 (torch's); head weight normal with std 1/sqrt(D), head bias 0."""
        with torch.no_grad():
            self.norm_weight.fill_(1.0)
            self.norm_bias.zero_()
            self.head_weight.normal_(0.0, 1.0 / math.sqrt(self.pose_dim))
            self.head_bias.zero_()

    def check_pose_dim(self, D: int) -> None:
        if D != self.pose_dim:
            raise ValueError(f"inverted-dot-product routing was built with pose_dim={self.pose_dim} but the votes "
                             f"have D={D}")

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        self.check_pose_dim(votes.shape[-1])
        return RoutingResult(*route_votes(votes, activations, self.iterations, self.norm_weight, self.norm_bias,
                                          self.head_weight, self.head_bias, self.eps))

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.inverted_dot_product.linear); elsewhere formed,
        then routed."""
        self.check_pose_dim(transforms.shape[2])
        if self.routes_in_torch(poses) and fusable(poses, transforms, activations, self.norm_weight, self.norm_bias,
                                                   self.head_weight, self.head_bias):
            return RoutingResult(*route_poses(poses, transforms, activations, self.iterations, self.norm_weight,
                                              self.norm_bias, self.head_weight, self.head_bias, self.eps))
        return super().route_linear(poses, transforms, activations)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iterations={self.iterations}, pose_dim={self.pose_dim}, eps={self.eps}"
