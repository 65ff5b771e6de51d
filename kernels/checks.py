"""Input checks that the PyTorch reference (routing/) and the Triton kernels both apply, defined once.

Only torch is imported here, so the checks work where triton is not installed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_iterations(iterations: int) -> int:
    """The number of routing iterations: an integer >= 1 (not a bool)."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    return iterations


INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_child_index(child_index: Tensor, rows: int, children: int) -> Tensor:
    """child_index must be an integer tensor [P, I] with P dividing the number of votes' rows, and values in
    [0, P * I) (a sample's P windows of I children can feed at most P * I distinct children).

    Returns it as int64 [P, I], on its own device. The values are checked before anything is sized by them.
    """
    if not isinstance(child_index, Tensor):
        raise TypeError(f"child_index must be an integer torch.Tensor [P, I] or None, got {type(child_index).__name__}")
    if child_index.ndim != 2 or child_index.dtype not in INDEX_DTYPES:
        raise ValueError(f"child_index must be an integer tensor [P, I] (window p, local child i -> sample's child), "
                         f"got dtype {child_index.dtype} with shape {list(child_index.shape)}")
    if child_index.device.type == "meta":
        raise ValueError("child_index is on the meta device (shape only, no values); pass a real tensor")
    P, I = child_index.shape
    if I != children or P == 0 or rows % P != 0:
        raise ValueError(
            f"child_index must be an integer tensor [P, {children}] with P dividing {rows}: it has shape [{P}, {I}] "
            f"but votes have {rows} rows of {children} children (rows are sample-major, window-minor)"
        )
    smallest, largest = int(child_index.min()), int(child_index.max())
    if smallest < 0:
        raise ValueError(f"child_index must be non-negative, got a minimum of {smallest}")
    if largest >= P * I:
        raise ValueError(f"child_index values must be below P * I = {P} * {I} = {P * I} (the most distinct children "
                         f"{P} windows of {I} children can feed), got a maximum of {largest}")
    return child_index.long()


# What the written-out backwards of dynamic routing (PyTorch and Triton) suggest when refusing second-order use.
DYNAMIC_DOUBLE_BACKWARD_HINT = (
    "; or build the router with routing.create('dynamic', double_backward=True), which routes with plain PyTorch "
    "autograd: differentiable twice, at the cost of votes-sized temporaries"
)


def refuse_second_order(algorithm: str, backend: str, alternative: str = "") -> None:
    """Called first in a hand-written backward: raise a RuntimeError when the backward runs under
    create_graph=True (grad mode on), since its result would carry no graph and second-order gradients would be
    silently wrong. `alternative` ends the message with what the user can do instead (or nothing)."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(
            f"{algorithm} routing (backend {backend!r}) computes its gradients with a hand-written backward that is "
            f"not itself differentiable, so second-order gradients (backward or torch.autograd.grad with "
            f"create_graph=True, as gradient penalties, Hessian-vector products and gradgradcheck use) are not "
            f"supported; take first-order gradients without create_graph=True{alternative}"
        )
