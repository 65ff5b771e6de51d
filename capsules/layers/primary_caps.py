"""Primary capsules: a convolution whose channels are grouped into capsules at every position."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capsules.layers.checks import expect_pose_kind, expect_positive_ints, expect_shape
from routing import squash


class PrimaryCaps(nn.Module):
    """Convolution to `types` capsules per position, as vectors (Sabour 2017) or 4x4 pose matrices (Hinton 2018).

    pose="vector": one convolution to types*dim channels; each capsule is squashed and its activation is its
    length. (Sabour's MNIST CapsNet: 256 -> 32 types x 8D, 9x9, stride 2.)
    pose="matrix": a convolution to types*16 pose entries (a linear map) and one to `types` activations through a
    sigmoid. (Hinton's smallNORB model: 1x1 convolution, B = 32 types.)

    ``forward(x [B, in_channels, H, W]) -> (poses [B, H', W', types, dim], activations [B, H', W', types])``
    with dim = 16 for pose matrices (row-major 4x4).
    """

    def __init__(
        self,
        in_channels: int,
        types: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        *,
        pose: str = "vector",
        dim: int | None = None,
    ):
        super().__init__()
        self.pose = expect_pose_kind(pose)
        dim = (8 if pose == "vector" else 16) if dim is None else dim
        if pose == "matrix" and dim != 16:
            raise ValueError(f"pose matrices are 4x4 (dim=16), got dim={dim}")
        expect_positive_ints(in_channels=in_channels, types=types, kernel_size=kernel_size, stride=stride, dim=dim)
        self.in_channels, self.types, self.dim = in_channels, types, dim
        self.poses = nn.Conv2d(in_channels, types * dim, kernel_size, stride, padding)
        self.activations = nn.Conv2d(in_channels, types, kernel_size, stride, padding) if pose == "matrix" else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        expect_shape(x, (None, self.in_channels, None, None), "[B, in_channels, H, W]", "PrimaryCaps input")
        out = self.poses(x)
        B, _, H, W = out.shape
        poses = out.view(B, self.types, self.dim, H, W).permute(0, 3, 4, 1, 2)  # [B, H, W, types, dim]
        if self.activations is None:
            poses = squash(poses)
            return poses, torch.linalg.vector_norm(poses, dim=-1)
        return poses.contiguous(), torch.sigmoid(self.activations(x)).permute(0, 2, 3, 1).contiguous()

    def extra_repr(self) -> str:
        return f"pose={self.pose!r}, types={self.types}, dim={self.dim}"
