"""A compact capsule network for MNIST that trains on a 2-core CPU in minutes, with any routing algorithm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from capsules.layers import CapsuleLinear, PrimaryCaps
from capsules.layers.checks import expect_positive_ints, expect_shape
from capsules.models.output import CapsuleOutput
from capsules.models.registry import register_model


def conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


@register_model("compact")
class CompactCapsNet(nn.Module):
    """A small convolutional stem, matrix primary capsules and one routed layer of class capsules.

    Stem: 3x3 convolutions with BatchNorm and ReLU, `channels` wide, the 1st and 3rd with stride 2 (28 -> 7).
    PrimaryCaps 1x1: `types` capsules per position, 4x4 pose (linear) + sigmoid activation.
    Class capsules: CapsuleLinear over all 7x7xtypes primary capsules with a 4x4 transform per (child, class),
    routed by `routing` with the children's activations. The same layers serve every routing algorithm, so
    algorithms are compared in one architecture. Defaults (133K parameters on MNIST) were sized for training
    speed on a 2-core CPU: the stem is strided early, and routing cost grows with the 7 x 7 x types children
    (with 4 types the stem and the class layer cost about the same; 8 types roughly double the class layer).

    ``forward(images [B, in_channels, H, W], labels ignored) -> CapsuleOutput(activations [B, classes],
    poses [B, classes, 16], None)``.
    """

    def __init__(
        self,
        routing: str = "dynamic",
        routing_options: dict[str, Any] | None = None,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        types: int = 4,
    ):
        super().__init__()
        expect_positive_ints(in_channels=in_channels, image_size=image_size, classes=classes, types=types)
        if isinstance(channels, str | bytes) or not isinstance(channels, Sequence) or len(channels) != 3:
            raise ValueError(f"channels gives the widths of the 3 stem convolutions, got {channels!r}")
        expect_positive_ints(**{f"channels[{i}]": c for i, c in enumerate(channels)})
        self.in_channels, self.image_size, self.classes = in_channels, image_size, classes
        c1, c2, c3 = channels
        self.stem = nn.Sequential(conv_block(in_channels, c1, 2), conv_block(c1, c2, 1), conv_block(c2, c3, 2))
        grid = (image_size + 3) // 4  # two stride-2 convolutions with padding 1: ceil(ceil(n / 2) / 2)
        self.primary = PrimaryCaps(c3, types, kernel_size=1, pose="matrix")
        self.classes_caps = CapsuleLinear(grid * grid * types, 16, classes, 16, routing, pose="matrix",
                                          **(routing_options or {}))

    def forward(self, images: Tensor, labels: Tensor | None = None) -> CapsuleOutput:
        size = self.image_size
        expect_shape(images, (None, self.in_channels, size, size), "[B, C, H, W]", "CompactCapsNet images")
        poses, activations = self.primary(self.stem(images))
        poses, activations = self.classes_caps(poses.flatten(1, 3), activations.flatten(1))
        return CapsuleOutput(activations, poses)
