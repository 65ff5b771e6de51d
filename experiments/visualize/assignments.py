"""The routing assignments of every routed layer of a model, recorded by forward hooks, as maps on the children's
capsule grid.

A routed layer is any module with a `routing.Router` as its ``router`` attribute (CapsuleLinear, ConvCaps,
ClassCaps); the hook on the router sees its RoutingResult, whose assignments are [N, I, J]. Where the children form
a grid of H x W positions with T capsule types, each parent's map is [H, W]: the assignment of the children at each
position to that parent, averaged over the T types.

- Children as a grid [B, H, W, T, D] (ClassCaps): I = H W T, child i = (h W + w) T + t.
- Children flattened (CapsuleLinear): the grid is the last capsule grid the model made before the layer (PrimaryCaps
  or ConvCaps output) with H W T = I, the way the compact model and CapsNet flatten their primary capsules.
- Windows (ConvCaps): N = B H'W' windows of K K T children routed to its T' parent types; a parent type's map is the
  mean over the windows a child is in of its assignment to that type at the window (window_child_index places the
  children), so positions that no window covers stay 0.
- No grid found: no map; the figures show the [I, J] matrix itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import routing
from capsules.layers import ConvCaps, PrimaryCaps
from capsules.layers.windows import window_child_index


@dataclass
class RoutedLayer:
    """One routed layer's call: `name` (its path in the model), `kind` (class name), `assignments` [N, I, J] as the
    router returned them, `grid` (H, W, T) of its children or None, and `maps` [B, J, H, W] or None."""

    name: str
    kind: str
    assignments: Tensor
    grid: tuple[int, int, int] | None = None
    maps: Tensor | None = None
    layer: nn.Module | None = field(default=None, repr=False)


def routed_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module whose ``router`` is a routing.Router, in definition order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(getattr(module, "router", None), routing.Router)]


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[list[RoutedLayer]]:
    """Within the block, every call of a routed layer of `model` appends a RoutedLayer (maps filled in) to the
    yielded list, in call order. The hooks are removed on exit."""
    records: list[RoutedLayer] = []
    last_grid: list[tuple[int, int, int]] = []  # (H, W, T) of the most recent capsule grid
    handles = []

    def remember_grid(module, inputs, output) -> None:
        poses = output[0]
        if poses.ndim == 5:  # [B, H, W, T, D]
            last_grid.append(tuple(poses.shape[1:4]))

    def layer_called(name: str):
        def hook(module, inputs) -> None:
            poses = inputs[0]
            grid = tuple(poses.shape[1:4]) if poses.ndim == 5 else (last_grid[-1] if last_grid else None)
            records.append(RoutedLayer(name, type(module).__name__, torch.empty(0), grid, layer=module))
        return hook

    def routed(module, inputs, result) -> None:
        record = records[-1]
        record.assignments = result.assignments.detach().float().clone()
        record.maps = assignment_maps(record)
        if record.maps is None:
            record.grid = None

    for name, module in routed_layers(model):
        handles.append(module.register_forward_pre_hook(layer_called(name)))
        handles.append(module.router.register_forward_hook(routed))
    for module in model.modules():
        if isinstance(module, (PrimaryCaps, ConvCaps)):
            handles.append(module.register_forward_hook(remember_grid))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def assignment_maps(record: RoutedLayer) -> Tensor | None:
    """[B, J, H, W] maps of `record` (see the module docstring), or None where its children have no grid."""
    if record.grid is None:
        return None
    H, W, T = record.grid
    assignments = record.assignments
    N, I, J = assignments.shape
    layer = record.layer
    if isinstance(layer, ConvCaps):
        return window_maps(assignments, H, W, T, layer.kernel_size, layer.stride)
    if I != H * W * T:
        return None
    return assignments.view(N, H, W, T, J).mean(dim=3).permute(0, 3, 1, 2)


def window_maps(assignments: Tensor, height: int, width: int, types: int, kernel_size: int, stride: int) -> Tensor:
    """ConvCaps assignments [B * H'W', K K T, T'] -> [B, T', H, W]: for each parent type, each position's children's
    assignment to it averaged over the windows that hold them and over the T child types (0 where no window
    reaches)."""
    index = window_child_index(height, width, types, kernel_size, stride, device=assignments.device)  # [P, K K T]
    windows, children = index.shape
    parents = assignments.shape[-1]
    per_sample = assignments.reshape(-1, windows * children, parents)  # [B, P K K T, T']
    flat = index.reshape(-1)
    total = per_sample.new_zeros(per_sample.shape[0], height * width * types, parents)
    total.index_add_(1, flat, per_sample)
    count = torch.bincount(flat, minlength=height * width * types).clamp_min(1).to(total.dtype)
    mean = total / count[None, :, None]
    return mean.view(-1, height, width, types, parents).mean(dim=3).permute(0, 3, 1, 2)
