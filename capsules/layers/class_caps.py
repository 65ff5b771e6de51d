"""Class capsules over a whole capsule grid: transforms shared across positions, with coordinate addition."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from capsules.layers.checks import expect_pose_kind, expect_positive_ints, expect_shape
from capsules.layers.routers import build_router
from capsules.layers.votes import shared_matrix_votes, shared_vector_votes

# Where the scaled (row, column) go in a vote. Matrix poses: the first two elements of the right-hand column
# of the 4x4 vote matrix, entries (0, 3) and (1, 3) (Hinton et al. 2018, section 3.1); vectors: entries 0, 1.
COORDINATE_SLOTS = {"matrix": (3, 7), "vector": (0, 1)}


def scaled_coordinates(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """[H*W, 2]: (row, column) of each position's centre scaled to (0, 1): ((y + 0.5) / H, (x + 0.5) / W)."""
    rows = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    return torch.stack(torch.broadcast_tensors(rows[:, None], cols[None, :]), dim=-1).reshape(-1, 2)


class ClassCaps(nn.Module):
    """Every capsule of an H x W grid of in_types capsules votes for each of out_caps class capsules.

    One transform per (child type, class) is shared by all positions: W [in_types, out_caps, 4, 4] for pose
    matrices (pose="matrix", in_dim = out_dim = 16), [in_types, out_caps, out_dim, in_dim] for vectors. With
    coordinate_addition, the scaled coordinates of each child's position (`scaled_coordinates`) are added to
    two entries of its votes (COORDINATE_SLOTS), so the class capsules know where the parts are.

    ``forward(poses [B, H, W, in_types, in_dim], activations [B, H, W, in_types] or None) ->
    (poses [B, out_caps, out_dim], activations [B, out_caps])``.
    """

    def __init__(
        self,
        in_types: int,
        out_caps: int,
        routing: str = "em",
        *,
        pose: str = "matrix",
        in_dim: int = 16,
        out_dim: int = 16,
        coordinate_addition: bool = True,
        **routing_options: Any,
    ):
        super().__init__()
        expect_positive_ints(in_types=in_types, out_caps=out_caps, in_dim=in_dim, out_dim=out_dim)
        self.pose = expect_pose_kind(pose)
        if pose == "matrix" and (in_dim, out_dim) != (16, 16):
            raise ValueError(f"pose matrices are 4x4: in_dim and out_dim must be 16, got {in_dim} and {out_dim}")
        if coordinate_addition and out_dim < 2:
            raise ValueError("coordinate addition needs votes of at least 2 entries")
        self.in_types, self.out_caps, self.in_dim, self.out_dim = in_types, out_caps, in_dim, out_dim
        self.coordinate_addition = bool(coordinate_addition)
        shape = (in_types, out_caps, 4, 4) if pose == "matrix" else (in_types, out_caps, out_dim, in_dim)
        self.weight = nn.Parameter(torch.empty(shape))
        self.router = build_router(routing, routing_options, in_caps=in_types, out_caps=out_caps, pose_dim=out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal with std 1/sqrt(fan-in of one vote entry): in_dim for vectors, 4 for 4x4 matrix products."""
        nn.init.normal_(self.weight, std=1 / math.sqrt(self.in_dim if self.pose == "vector" else 4))

    def votes(self, poses: Tensor) -> Tensor:
        """poses [B, H, W, in_types, in_dim] -> votes [B, H*W*in_types, out_caps, out_dim] (contiguous),
        coordinates added when coordinate_addition is on."""
        B, H, W, T, _ = poses.shape
        grid = poses.reshape(B, H * W, T, self.in_dim)
        votes = (shared_matrix_votes if self.pose == "matrix" else shared_vector_votes)(grid, self.weight)
        if not self.coordinate_addition:
            return votes
        offsets = votes.new_zeros(H * W, T, self.out_dim)
        coordinates = scaled_coordinates(H, W, votes.device, votes.dtype)  # [H*W, 2]
        offsets[:, :, list(COORDINATE_SLOTS[self.pose])] = coordinates[:, None]
        return votes + offsets.view(H * W * T, 1, self.out_dim)

    def forward(self, poses: Tensor, activations: Tensor | None = None) -> tuple[Tensor, Tensor]:
        expect_shape(poses, (None, None, None, self.in_types, self.in_dim), "[B, H, W, in_types, in_dim]",
                     "ClassCaps poses")
        B, H, W = poses.shape[:3]
        child_acts = None
        if activations is not None:
            expect_shape(activations, (B, H, W, self.in_types), "[B, H, W, in_types]", "ClassCaps activations")
            child_acts = activations.reshape(B, H * W * self.in_types)
        result = self.router(self.votes(poses), child_acts)
        return result.poses, result.activations

    def extra_repr(self) -> str:
        return (f"in_types={self.in_types}, out_caps={self.out_caps}, pose={self.pose!r}, "
                f"coordinate_addition={self.coordinate_addition}")
