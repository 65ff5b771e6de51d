"""Input checks shared by every router: clear errors instead of deep tracebacks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

_finite_checks = True


def finite_checks_enabled() -> bool:
    """Whether routers scan their inputs for NaN/Inf (one extra read of the votes; skipped under torch.compile)."""
    return _finite_checks and not torch.compiler.is_compiling()


@contextlib.contextmanager
def finite_checks(enabled: bool) -> Iterator[None]:
    """Turn the NaN/Inf scan of routing inputs on or off inside a `with` block (benchmarks turn it off). The scan
    also checks the activations' range and finds the votes that need float64 (Router.float32_range)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"routing.finite_checks expects True or False, got {type(enabled).__name__} {enabled!r}")
    global _finite_checks
    previous, _finite_checks = _finite_checks, enabled
    try:
        yield
    finally:
        _finite_checks = previous


def type_name(value: object) -> str:
    """The qualified name of value's type ('numpy.ndarray', 'list'), for error messages."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"


def check_tensor(value: object, what: str, name: str, shape: str) -> None:
    """A torch.Tensor with data: TypeError for anything else (a numpy array, a list), ValueError for a tensor on
    the meta device (it has a shape but no values to route)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} routing: {what} must be a torch.Tensor of shape {shape}, got {type_name(value)}")
    if value.device.type == "meta":
        raise ValueError(f"{name} routing: {what} are on the meta device (shape only, no data); move the router "
                         f"and its inputs to a real device (for example with .to_empty(device='cpu')) before routing")


def check_votes(
    votes: Tensor,
    activations: Tensor | None,
    name: str,
    scan_votes: bool = True,
    activation_range: tuple[float, float | None] | None = None,
) -> float | None:
    """Check votes [B, I, J, D] and optional activations [B, I]; raise TypeError (not a tensor) or ValueError
    (shape, dtype, device, values) saying what was expected.

    While the NaN/Inf scan is enabled it covers the votes too unless scan_votes is False, and the activations are
    checked to lie in activation_range (low, high or None for no upper bound; None: anything finite). Returns
    the largest |vote| found by the scan (None when the votes were not scanned)."""
    check_tensor(votes, "votes", name, "[B, I, J, D]")
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
        check_tensor(activations, "activations", name, "[B, I] (or None)")
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
    if not finite_checks_enabled():
        return None
    peak = None
    if scan_votes:
        peak = peak_magnitude(votes)
        if not math.isfinite(peak):
            raise ValueError(f"{name} routing: votes contain NaN or Inf")
    if activations is not None:
        check_activation_values(activations, activation_range, name)
    return peak


def check_activation_values(activations: Tensor, activation_range: tuple[float, float | None] | None,
                            name: str) -> None:
    """Activations must be finite and lie in activation_range, [low, high] (high None: no upper bound; the range
    None: anything finite). One read of the activations (their min and max, which NaN and Inf reach)."""
    with torch.no_grad():
        smallest, largest = torch.stack((activations.min(), activations.max())).tolist()
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        raise ValueError(f"{name} routing: activations contain NaN or Inf")
    if activation_range is None:
        return
    low, high = activation_range
    if smallest < low or (high is not None and largest > high):
        wanted = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} routing: activations must be {wanted}, got values from {smallest:.6g} to "
                         f"{largest:.6g}")


def check_linear_inputs(
    poses: Tensor,
    transforms: Tensor,
    activations: Tensor | None,
    name: str,
    activation_range: tuple[float, float | None] | None = None,
) -> float | None:
    """Check poses [B, I, K], transforms [I, J, D, K] and optional activations [B, I] of a dense layer's routing
    (``router(poses, activations, transforms=W)``); raise TypeError or ValueError saying what was expected.
    Returns a bound on the largest |vote| (K max|poses| max|W|) while the finite scan is enabled, else None."""
    for what, t, dims in (("poses", poses, "[B, I, K]"), ("transforms", transforms, "[I, J, D, K]")):
        check_tensor(t, what, name, dims)
        if not t.is_floating_point():
            raise ValueError(f"{name} routing: {what} must be a floating-point torch.Tensor {dims}, got {t.dtype}")
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
    check_votes(poses.new_empty(()).expand(poses.shape[0], I, J, D), activations, name, scan_votes=False,
                activation_range=activation_range)
    if not finite_checks_enabled():
        return None
    peaks = peak_magnitude(poses), peak_magnitude(transforms)
    if not all(map(math.isfinite, peaks)):
        raise ValueError(f"{name} routing: poses or transforms contain NaN or Inf")
    return K * peaks[0] * peaks[1]


def peak_magnitude(x: Tensor) -> float:
    """max |x| in one read (NaN when x holds a NaN, Inf when it holds an Inf)."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(x, ord=math.inf))
