"""Input checks that the PyTorch reference (routing/) and the Triton kernels both apply, defined once.

Only torch is imported here, so the checks work where triton is not installed.
"""

from __future__ import annotations

from torch import Tensor


def check_iterations(iterations: int) -> int:
    """The number of routing iterations: an integer >= 1 (not a bool)."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    return iterations


def check_child_index(child_index: Tensor, rows: int, children: int) -> Tensor:
    """child_index must be an integer tensor [P, I] with P dividing the number of votes' rows.

    Returns it as int64 [P, I], on its own device.
    """
    if not isinstance(child_index, Tensor) or child_index.ndim != 2 or child_index.dtype.is_floating_point:
        raise ValueError("child_index must be an integer tensor [P, I] (window p, local child i -> sample's child)")
    P, I = child_index.shape
    if I != children or rows % P != 0:
        raise ValueError(
            f"child_index must be an integer tensor [P, {children}] with P dividing {rows}: it has shape [{P}, {I}] "
            f"but votes have {rows} rows of {children} children (rows are sample-major, window-minor)"
        )
    if child_index.numel() and int(child_index.min()) < 0:
        raise ValueError("child_index must be non-negative")
    return child_index.long()
