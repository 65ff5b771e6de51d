"""Shape checks for capsule layers: a ValueError that names the layer, the expected layout and what came in."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def expect_shape(x: Tensor, shape: Sequence[int | None], layout: str, what: str) -> None:
    """Raise ValueError unless x is a floating-point tensor of `shape` (None matches any size).

    layout names the dimensions for the message, e.g. "[B, I, in_dim]"; what names the argument, e.g.
    "CapsuleLinear poses".
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor {layout}, got {type(x).__name__}")
    expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape, strict=False)):
        raise ValueError(f"{what} must have shape {layout} = {expected}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floating-point, got dtype {x.dtype}")


def expect_positive_ints(**values: int) -> None:
    """Raise ValueError naming every argument that is not an integer >= 1."""
    bad = [f"{k}={v!r}" for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"expected positive integers, got {', '.join(bad)}")


POSE_KINDS = ("vector", "matrix")


def expect_pose_kind(pose: str) -> str:
    """pose is "vector" (Sabour: vectors, squashed) or "matrix" (Hinton: 4x4 pose matrices, sigmoid activations)."""
    if pose not in POSE_KINDS:
        raise ValueError(f"pose must be one of {POSE_KINDS}, got {pose!r}")
    return pose


def check_labels(labels: Tensor, batch: int, classes: int) -> Tensor:
    """labels must be an integer tensor [batch] with values in 0..classes-1; returned as long."""
    if not isinstance(labels, Tensor) or labels.shape != (batch,) or labels.dtype.is_floating_point:
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor [B] = [{batch}], got {got}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, got values from {int(labels.min())} to "
                         f"{int(labels.max())}")
    return labels.long()
