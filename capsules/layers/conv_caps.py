"""A convolutional capsule layer between grids of 4x4 pose matrices, routed by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from capsules.layers.checks import expect_positive_ints, expect_shape
from capsules.layers.routers import accepts_child_index, build_router
from capsules.layers.votes import matrix_transforms
from capsules.layers.windows import extract_windows, window_child_index


class ConvCaps(nn.Module):
    """Hinton 2018 convolutional capsules: each K x K window of in_types capsules votes for out_types parents.

    A transform W [K, K, in_types, out_types, 4, 4] per (kernel position, child type, parent type) is shared by
    every window (no padding). The windows are strided views of the grid; their votes
    [B*H'*W', K*K*in_types, out_types, 16] (rows: sample-major, window-minor) are routed in one call, handed to
    the router as the windows' poses and the transforms kron(I_4, W^T) (capsules.layers.votes.matrix_transforms),
    so that on the CPU the router forms them inside its routing (routing.cpu.fusion).
    Routers that take ``child_index`` (EM) normalise each child's assignments over every parent it feeds at every
    window, as the authors' code does; other routers (dynamic) route each window on its own, a child's couplings
    summing to 1 over the out_types parents of that window.

    ``forward(poses [B, H, W, in_types, 16], activations [B, H, W, in_types] or None) ->
    (poses [B, H', W', out_types, 16], activations [B, H', W', out_types])``, H' = (H - K) // stride + 1.
    """

    def __init__(
        self, in_types: int, out_types: int, kernel_size: int, stride: int = 1, routing: str = "em",
        **routing_options: Any,
    ):
        super().__init__()
        expect_positive_ints(in_types=in_types, out_types=out_types, kernel_size=kernel_size, stride=stride)
        self.in_types, self.out_types, self.kernel_size, self.stride = in_types, out_types, kernel_size, stride
        self.weight = nn.Parameter(torch.empty(kernel_size, kernel_size, in_types, out_types, 4, 4))
        self.router = build_router(routing, routing_options, in_caps=kernel_size * kernel_size * in_types,
                                   out_caps=out_types, pose_dim=16)
        self.shares_children = accepts_child_index(self.router)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal with std 1/2 (= 1/sqrt(4), the fan-in of one entry of a 4x4 matrix product)."""
        nn.init.normal_(self.weight, std=0.5)

    def forward(self, poses: Tensor, activations: Tensor | None = None) -> tuple[Tensor, Tensor]:
        expect_shape(poses, (None, None, None, self.in_types, 16), "[B, H, W, in_types, 16]", "ConvCaps poses")
        B, H, W = poses.shape[:3]
        if activations is not None:
            expect_shape(activations, (B, H, W, self.in_types), "[B, H, W, in_types]", "ConvCaps activations")
        K, T, O = self.kernel_size, self.in_types, self.out_types
        windows = extract_windows(poses, K, self.stride)  # [B, H', W', K, K, T, 16]
        Ho, Wo = windows.shape[1:3]
        children = K * K * T
        transforms = matrix_transforms(self.weight.view(children, O, 4, 4))
        child_acts = None
        if activations is not None:
            child_acts = extract_windows(activations, K, self.stride).reshape(B * Ho * Wo, children)
        extra = {}
        if self.shares_children:
            extra["child_index"] = window_child_index(H, W, T, K, self.stride, device=poses.device)
        result = self.router(windows.reshape(B * Ho * Wo, children, 16), child_acts, transforms=transforms, **extra)
        return result.poses.reshape(B, Ho, Wo, O, 16), result.activations.reshape(B, Ho, Wo, O)

    def extra_repr(self) -> str:
        return (f"in_types={self.in_types}, out_types={self.out_types}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
