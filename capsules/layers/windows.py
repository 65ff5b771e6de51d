"""K x K windows of a capsule grid, by strided views (no Python loop over positions)."""

from __future__ import annotations

import torch
from torch import Tensor


def output_size(size: int, kernel_size: int, stride: int) -> int:
    """Number of windows along one side (no padding): (size - kernel_size) // stride + 1."""
    return (size - kernel_size) // stride + 1


def extract_windows(grid: Tensor, kernel_size: int, stride: int) -> Tensor:
    """grid [B, H, W, *C] -> windows [B, H', W', K, K, *C] (a strided view; no copy)."""
    if grid.shape[1] < kernel_size or grid.shape[2] < kernel_size:
        raise ValueError(
            f"a {kernel_size}x{kernel_size} window does not fit a {grid.shape[1]}x{grid.shape[2]} capsule grid"
        )
    windows = grid.unfold(1, kernel_size, stride).unfold(2, kernel_size, stride)  # [B, H', W', *C, K, K]
    extra = windows.ndim - 5
    return windows.permute(0, 1, 2, extra + 3, extra + 4, *range(3, 3 + extra))


def window_child_index(
    height: int, width: int, types: int, kernel_size: int, stride: int, device: torch.device | None = None
) -> Tensor:
    """child_index [H'*W', K*K*types]: local child (ky, kx, t) of window (y', x') is the grid's capsule
    ((y' stride + ky) * width + (x' stride + kx)) * types + t, with windows and local children in the order
    `extract_windows` lays them out."""
    rows = torch.arange(output_size(height, kernel_size, stride), device=device) * stride
    cols = torch.arange(output_size(width, kernel_size, stride), device=device) * stride
    k = torch.arange(kernel_size, device=device)
    y = (rows[:, None] + k[None, :])[:, None, :, None, None]  # [H', 1, K, 1, 1]
    x = (cols[:, None] + k[None, :])[None, :, None, :, None]  # [1, W', 1, K, 1]
    t = torch.arange(types, device=device)[None, None, None, None, :]
    index = (y * width + x) * types + t  # [H', W', K, K, T]
    return index.reshape(-1, kernel_size * kernel_size * types)
