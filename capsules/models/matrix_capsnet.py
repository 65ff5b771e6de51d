"""The matrix-capsule network of Hinton, Sabour & Frosst 2018 (smallNORB), with any routing algorithm."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from capsules.layers import ClassCaps, ConvCaps, PrimaryCaps
from capsules.layers.checks import expect_positive_ints, expect_shape
from capsules.models.output import CapsuleOutput
from capsules.models.registry import register_model

MIN_IMAGE_SIZE = 17  # conv1 5x5/2 -> PrimaryCaps 1x1 -> ConvCaps 3x3/2 -> ConvCaps 3x3/1 leaves at least 1x1


@register_model("matrix-capsnet")
class MatrixCapsNet(nn.Module):
    """Conv1 5x5 stride 2, A channels, ReLU; PrimaryCaps 1x1, B types of 4x4 pose + sigmoid activation;
    ConvCaps1 3x3 stride 2, C types; ConvCaps2 3x3 stride 1, D types; class capsules shared over positions with
    coordinate addition. Every capsule layer is routed by `routing` (default EM, as in the paper).

    The paper's model is A = B = C = D = 32 (smallNORB: 32x32 crops, in_channels 2 for the stereo pair,
    classes 5); "matrix-capsnet-small" is A = 64, B = 8, C = D = 16. Parameter counts do not depend on the image
    size. ``forward(images [B, in_channels, H, W], labels ignored) -> CapsuleOutput(activations, poses, None)``.
    """

    def __init__(
        self,
        routing: str = "em",
        routing_options: dict[str, Any] | None = None,
        *,
        in_channels: int = 1,
        classes: int = 10,
        A: int = 32,
        B: int = 32,
        C: int = 32,
        D: int = 32,
        coordinate_addition: bool = True,
    ):
        super().__init__()
        expect_positive_ints(in_channels=in_channels, classes=classes, A=A, B=B, C=C, D=D)
        options = routing_options or {}
        self.in_channels, self.classes = in_channels, classes
        self.conv1 = nn.Conv2d(in_channels, A, kernel_size=5, stride=2)
        self.primary = PrimaryCaps(A, B, kernel_size=1, pose="matrix")
        self.conv_caps1 = ConvCaps(B, C, kernel_size=3, stride=2, routing=routing, **options)
        self.conv_caps2 = ConvCaps(C, D, kernel_size=3, stride=1, routing=routing, **options)
        self.class_caps = ClassCaps(D, classes, routing, coordinate_addition=coordinate_addition, **options)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> CapsuleOutput:
        expect_shape(images, (None, self.in_channels, None, None), "[B, C, H, W]", "MatrixCapsNet images")
        if min(images.shape[2:]) < MIN_IMAGE_SIZE:
            raise ValueError(f"MatrixCapsNet needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels, "
                             f"got {list(images.shape[2:])}")
        poses, activations = self.primary(F.relu(self.conv1(images)))
        poses, activations = self.conv_caps1(poses, activations)
        poses, activations = self.conv_caps2(poses, activations)
        poses, activations = self.class_caps(poses, activations)
        return CapsuleOutput(activations, poses)


@register_model("matrix-capsnet-small")
def small_matrix_capsnet(routing: str = "em", routing_options: dict[str, Any] | None = None, **kwargs: Any):
    """The paper's small model: A = 64, B = 8, C = D = 16 (about 68K parameters)."""
    sizes = {"A": 64, "B": 8, "C": 16, "D": 16}
    clash = sorted(set(sizes) & set(kwargs))
    if clash:
        raise ValueError(f"matrix-capsnet-small fixes {', '.join(clash)}; use 'matrix-capsnet' to choose them")
    return MatrixCapsNet(routing, routing_options, **sizes, **kwargs)
