"""Input checks shared by every router: clear errors instead of deep tracebacks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from kernels.utils import accumulation_dtype

_finite_checks = True


def finite_checks_enabled() -> bool:
    """Whether routers scan their inputs for NaN/Inf (one extra read of the votes; skipped under torch.compile)."""
    return _finite_checks and not torch.compiler.is_compiling()


@contextlib.contextmanager
def finite_checks(enabled: bool) -> Iterator[None]:
    """Turn the NaN/Inf scan of routing inputs on or off inside a `with` block (benchmarks turn it off)."""
    global _finite_checks
    previous, _finite_checks = _finite_checks, enabled
    try:
        yield
    finally:
        _finite_checks = previous


def check_votes(votes: Tensor, activations: Tensor | None, name: str, scan_votes: bool = True) -> None:
    """Check votes [B, I, J, D] and optional activations [B, I]; raise ValueError saying what was expected.
    The NaN/Inf scan (while enabled) covers the votes too unless scan_votes is False."""
    if not isinstance(votes, Tensor):
        raise ValueError(
            f"{name} routing: votes must be a torch.Tensor of shape [B, I, J, D], got {type(votes).__name__}")
    if votes.ndim != 4:
        raise ValueError(
            f"{name} routing: votes must have 4 dims [B, I, J, D] (batch, children, parents, pose size), "
            f"got {votes.ndim} dims with shape {tuple(votes.shape)}"
        )
    if not votes.is_floating_point():
        raise ValueError(f"{name} routing: votes must be a floating-point tensor, got dtype {votes.dtype}")
    if min(votes.shape) == 0:
        raise ValueError(f"{name} routing: votes must have no empty dimension, got shape {tuple(votes.shape)}")
    if activations is not None:
        if not isinstance(activations, Tensor):
            raise ValueError(f"{name} routing: activations must be a torch.Tensor [B, I] or None")
        expected = tuple(votes.shape[:2])
        if tuple(activations.shape) != expected:
            raise ValueError(
                f"{name} routing: activations must have shape [B, I] = {list(expected)} to match votes "
                f"{list(votes.shape)}, got {list(activations.shape)}"
            )
        if not activations.is_floating_point():
            raise ValueError(f"{name} routing: activations must be floating-point, got dtype {activations.dtype}")
        if activations.device != votes.device:
            raise ValueError(
                f"{name} routing: activations are on {activations.device} but votes on {votes.device}"
            )
    if finite_checks_enabled():
        if scan_votes and not all_finite(votes):
            raise ValueError(f"{name} routing: votes contain NaN or Inf")
        if activations is not None and not all_finite(activations):
            raise ValueError(f"{name} routing: activations contain NaN or Inf")


def check_linear_inputs(poses: Tensor, transforms: Tensor, activations: Tensor | None, name: str) -> None:
    """Check poses [B, I, K], transforms [I, J, D, K] and optional activations [B, I] of a dense layer's routing
    (``router(poses, activations, transforms=W)``); raise ValueError saying what was expected."""
    for what, t, dims in (("poses", poses, "[B, I, K]"), ("transforms", transforms, "[I, J, D, K]")):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} routing: {what} must be a floating-point torch.Tensor {dims}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.ndim != len(dims.split(",")) or min(t.shape) == 0:
            raise ValueError(f"{name} routing: {what} must have shape {dims} with no empty dimension, "
                             f"got {tuple(t.shape)}")
    I, J, D, K = transforms.shape
    if tuple(poses.shape[1:]) != (I, K):
        raise ValueError(f"{name} routing: poses [B, I, K] must match transforms [I, J, D, K] = {[I, J, D, K]} "
                         f"(I = {I} children of K = {K} numbers), got poses {list(poses.shape)}")
    autocast = torch.is_autocast_enabled(poses.device.type)  # which casts both for the votes' product
    if transforms.device != poses.device or (transforms.dtype != poses.dtype and not autocast):
        raise ValueError(f"{name} routing: transforms ({transforms.dtype} on {transforms.device}) must have the "
                         f"poses' dtype and device ({poses.dtype} on {poses.device})")
    # the activations have the votes' checks; the votes' finite scan is done on the poses and transforms
    check_votes(poses.new_empty(()).expand(poses.shape[0], I, J, D), activations, name, scan_votes=False)
    if finite_checks_enabled() and not (all_finite(poses) and all_finite(transforms)):
        raise ValueError(f"{name} routing: poses or transforms contain NaN or Inf")


def all_finite(x: Tensor) -> bool:
    """No NaN or Inf in x. A sum (one read, no bool tensor of x's size) settles the common case; only a
    non-finite sum, which may also come from overflow of large finite values, is confirmed element-wise."""
    with torch.no_grad():
        total = x.sum(dtype=accumulation_dtype(x.dtype))
        return bool(torch.isfinite(total)) or bool(torch.isfinite(x).all())
