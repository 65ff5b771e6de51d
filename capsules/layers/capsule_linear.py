"""A fully connected capsule layer: a learned transform per (child, parent), then routing by name."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from capsules.layers.checks import expect_pose_kind, expect_positive_ints, expect_shape
from capsules.layers.routers import build_router
from capsules.layers.votes import matrix_transforms


class CapsuleLinear(nn.Module):
    """I child capsules -> J parent capsules, routed by any registered algorithm.

    pose="vector": votes u_hat_ij = W_ij u_i with W [in_caps, out_caps, out_dim, in_dim] (Sabour's DigitCaps:
    1152 x 10 x 16 x 8, no bias). pose="matrix": 4x4 pose matrices (in_dim = out_dim = 16), votes
    V_ij = M_i W_ij with W [in_caps, out_caps, 4, 4] (Hinton 2018), routed as flattened poses with the transforms
    kron(I_4, W_ij^T) (capsules.layers.votes.matrix_transforms). The router gets poses and transforms
    (``router(poses, activations, transforms=T)``) and forms the votes as one batched matrix product over
    children or, on the CPU, fuses them into its routing (routing.cpu.fusion).

    routing: a name from `routing.available()`; routing_options go to `routing.create` (for example
    iterations=3, backend="torch"); routers that learn parameters get the sizes they take (in_caps, out_caps,
    pose_dim = out_dim; EM's beta_u and beta_a per parent, for example).

    ``forward(poses [B, in_caps, in_dim], activations [B, in_caps] or None) -> (poses [B, out_caps, out_dim],
    activations [B, out_caps])``. The router is the submodule ``router`` (a forward hook on it sees the
    assignments [B, in_caps, out_caps]).
    """

    def __init__(
        self,
        in_caps: int,
        in_dim: int,
        out_caps: int,
        out_dim: int,
        routing: str = "dynamic",
        *,
        pose: str = "vector",
        **routing_options: Any,
    ):
        super().__init__()
        expect_positive_ints(in_caps=in_caps, in_dim=in_dim, out_caps=out_caps, out_dim=out_dim)
        self.pose = expect_pose_kind(pose)
        if pose == "matrix" and (in_dim, out_dim) != (16, 16):
            raise ValueError(f"pose matrices are 4x4: in_dim and out_dim must be 16, got {in_dim} and {out_dim}")
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        shape = (in_caps, out_caps, out_dim, in_dim) if pose == "vector" else (in_caps, out_caps, 4, 4)
        self.weight = nn.Parameter(torch.empty(shape))
        self.router = build_router(routing, routing_options, in_caps=in_caps, out_caps=out_caps, pose_dim=out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal with std 1/sqrt(fan-in of one vote entry): in_dim for vectors, 4 for 4x4 matrix products."""
        nn.init.normal_(self.weight, std=1 / math.sqrt(self.in_dim if self.pose == "vector" else 4))

    def forward(self, poses: Tensor, activations: Tensor | None = None) -> tuple[Tensor, Tensor]:
        expect_shape(poses, (None, self.in_caps, self.in_dim), "[B, in_caps, in_dim]", "CapsuleLinear poses")
        if activations is not None:
            expect_shape(activations, (poses.shape[0], self.in_caps), "[B, in_caps]", "CapsuleLinear activations")
        transforms = self.weight if self.pose == "vector" else matrix_transforms(self.weight)
        result = self.router(poses, activations, transforms=transforms)  # forms the votes, or fuses them
        return result.poses, result.activations

    def extra_repr(self) -> str:
        return (f"in_caps={self.in_caps}, in_dim={self.in_dim}, out_caps={self.out_caps}, "
                f"out_dim={self.out_dim}, pose={self.pose!r}")
