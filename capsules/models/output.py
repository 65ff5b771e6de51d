"""What every capsule model returns."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class CapsuleOutput(NamedTuple):
    """activations [B, classes]: class capsule activations (lengths |v| for dynamic routing, a_j for EM), the
    scores to classify by; poses [B, classes, D]: class capsule poses; reconstruction [B, C*H*W] from the decoder,
    or None for models without one."""

    activations: Tensor
    poses: Tensor
    reconstruction: Tensor | None = None
