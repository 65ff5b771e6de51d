"""The registered self-attention router: ``routing.create("self-attention", in_caps=I, out_caps=J)``, the
PyTorch backend, with the learned prior B."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from routing.cpu.fusion import fusable
from routing.option_checks import positive_int, real
from routing.registry import register
from routing.result import RoutingResult
from routing.router import FLOAT32_SQUARES_RANGE, Router
from routing.self_attention.linear import route_poses
from routing.self_attention.reference import route_votes

NAME = "self-attention"


def _check_size(option: str, value: object) -> int:
    if value is None:
        raise ValueError(f"{NAME} routing needs the option {option} (a positive integer: it sizes the learned "
                         f"prior B [in_caps, out_caps]; the capsule layers pass it), got None")
    return positive_int(NAME, option, value)


@register(NAME)
class SelfAttentionRouting(Router):
    """Self-attention routing of Efficient-CapsNet (Mazzia, Salvetti & Chiaberge, "Efficient-CapsNet: capsule
    network with self-attention routing", Scientific Reports 2021). Not iterative.

    Per sample, with votes u [I, J, D], the children's activations a_i (ones when None: the authors' formulas
    exactly) and the learned prior B [in_caps, out_caps] (the parameter ``prior``, zeros at start):
        A_ij = <u_ij, sum_k a_k u_kj> / sqrt(D)           (agreement with all votes for parent j, k = i included)
        c_ij = softmax over parents j of A_ij
        s_j  = sum_i a_i (c_ij + B_ij) u_ij
        v_j  = (1 - exp(-|s_j|)) s_j / (|s_j| + eps),    output activation |v_j|.
    Given activations weight each vote in both sums over children (the agreement's sum over k and s_j), as this
    library's dynamic routing weights its sums (so they must be >= 0); the agreement's own vote u_ij is not
    weighted. Votes beyond float32's reach for squares (routing.router.FLOAT32_SQUARES_RANGE) are routed in float64.

    Read from the authors' code (EscVM/Efficient-CapsNet, utils/layers.py, class FCCaps.call): u [batch, J, I, D];
    ``c = einsum('...ij,...kj->...i', u, u)`` (each vote dotted with the sum of all votes for its parent),
    ``c = c / sqrt(D)`` with D the parents' (the votes') size, ``c = softmax(c, axis=1)`` (the parent axis),
    ``c = c + b`` with b [J, I, 1] initialised to zeros, ``s = reduce_sum(u * c, axis=-2)``, then their Squash
    ``(1 - 1 / (exp(n) + eps)) * s / (n + eps)``, n = |s|, eps = 1e-20. The squash here uses exp(-n) and eps in
    the denominator only (routing.self_attention.squash): finite at s = 0 and free of overflow.

    Options: in_caps and out_caps (required positive integers: the rows and columns of B; the capsule layers pass
    them), eps (1e-8, the squash's epsilon; > 0 and finite). Votes with I = m * in_caps children use row
    i % in_caps of B (ClassCaps: children position-major, type-minor); I not a multiple of in_caps or J != out_caps
    is a ValueError. Defined per window: ConvCaps routes each window as its own row (in_caps = K*K*in_types).

    Result: poses v [B, J, D], activations |v| [B, J] in [0, 1), assignments c [B, I, J], the softmax over parents
    (each child's row sums to 1; normalisation "parents"). Note that the prior B is added to c inside the sum
    over children and is not part of the returned assignments.
    """

    normalisation = "parents"
    activation_range = (0.0, None)  # weights of the votes in the sums
    # the agreement <u_ij, sum_k a_k u_kj> overflows float32 from |u| ~ 1e18
    float32_range = FLOAT32_SQUARES_RANGE
    child_parameters = True  # the prior B has a row per child

    def __init__(self, *, in_caps: int | None = None, out_caps: int | None = None, eps: float = 1e-8):
        super().__init__()
        self.in_caps = _check_size("in_caps", in_caps)
        self.out_caps = _check_size("out_caps", out_caps)
        self.eps = real(NAME, "eps", eps)
        self.prior = nn.Parameter(torch.zeros(self.in_caps, self.out_caps))

    def check_sizes(self, children: int, parents: int) -> None:
        """Votes' I must be a multiple of in_caps and J equal to out_caps."""
        if children % self.in_caps != 0:
            raise ValueError(f"{NAME} routing was built with in_caps={self.in_caps} but votes have I={children} "
                             f"children; I must be a multiple of in_caps (child i uses row i % in_caps of B)")
        if parents != self.out_caps:
            raise ValueError(f"{NAME} routing was built with out_caps={self.out_caps} but votes have J={parents} "
                             "parents")

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        self.check_sizes(votes.shape[1], votes.shape[2])
        return RoutingResult(*route_votes(votes, activations, self.prior, self.eps))

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.self_attention.linear); elsewhere formed,
        then routed."""
        self.check_sizes(transforms.shape[0], transforms.shape[1])
        if self.routes_in_torch(poses) and fusable(poses, transforms, activations, self.prior):
            return RoutingResult(*route_poses(poses, transforms, activations, self.prior, self.eps))
        return super().route_linear(poses, transforms, activations)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, in_caps={self.in_caps}, out_caps={self.out_caps}, eps={self.eps}"
