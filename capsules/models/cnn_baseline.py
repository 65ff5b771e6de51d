"""A plain CNN baseline: the compact capsule model with its capsules and routing taken out, sized to a parameter
count, so that a capsule model can be read against no routing and no capsules at the same size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from capsules.layers.checks import expect_positive_ints, expect_shape
from capsules.models.compact import conv_block
from capsules.models.output import CapsuleOutput
from capsules.models.registry import register_model


@register_model("cnn-baseline")
class CNNBaseline(nn.Module):
    """The compact model's convolutional stem, a 1x1 convolution to `width` feature maps (where the compact model
    has its primary capsules), BatchNorm and ReLU, then one linear classifier over every position (where it has its
    routed class capsules). No capsules, no routing.

    `width` is chosen from `params` when given: the smallest width whose parameter count reaches `params` (so a
    baseline can match a capsule model's size: ``create_model("cnn-baseline", params=count_parameters(capsnet))``).

    ``forward(images [B, in_channels, H, W], labels ignored) -> CapsuleOutput(activations [B, classes], poses
    [B, classes, 0], None)``: the activations are the softmax probabilities of the classifier's logits (train with
    the nll loss, which then is the usual cross-entropy); there are no poses.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        width: int = 64,
        params: int | None = None,
    ):
        super().__init__()
        expect_positive_ints(in_channels=in_channels, image_size=image_size, classes=classes, width=width)
        if len(channels) != 3:
            raise ValueError(f"channels gives the widths of the 3 stem convolutions, got {channels!r}")
        expect_positive_ints(**{f"channels[{k}]": c for k, c in enumerate(channels)})
        self.in_channels, self.image_size, self.classes = in_channels, image_size, classes
        c1, c2, c3 = channels
        grid = (image_size + 3) // 4  # two stride-2 convolutions with padding 1, as in the compact model
        if params is not None:
            expect_positive_ints(params=params)
            width = width_for(params, in_channels, channels, grid, classes)
        self.width = width
        self.stem = nn.Sequential(conv_block(in_channels, c1, 2), conv_block(c1, c2, 1), conv_block(c2, c3, 2))
        self.features = nn.Sequential(nn.Conv2d(c3, width, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        self.classifier = nn.Linear(grid * grid * width, classes)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> CapsuleOutput:
        size = self.image_size
        expect_shape(images, (None, self.in_channels, size, size), "[B, C, H, W]", "CNNBaseline images")
        logits = self.classifier(self.features(self.stem(images)).flatten(1))
        return CapsuleOutput(torch.softmax(logits, dim=1), logits.new_zeros(logits.shape[0], self.classes, 0))


def parameter_count(in_channels: int, channels: Sequence[int], grid: int, classes: int, width: int) -> int:
    """CNNBaseline's parameter count for these sizes (convolutions without bias, BatchNorm weight and bias)."""
    c1, c2, c3 = channels
    stem = 9 * (in_channels * c1 + c1 * c2 + c2 * c3) + 2 * (c1 + c2 + c3)
    return stem + c3 * width + 2 * width + (grid * grid * width + 1) * classes


def width_for(params: int, in_channels: int, channels: Sequence[int], grid: int, classes: int) -> int:
    """The smallest width whose parameter count reaches `params` (at least 1)."""
    base = parameter_count(in_channels, channels, grid, classes, 0)
    per_width = parameter_count(in_channels, channels, grid, classes, 1) - base
    return max(1, -(-(params - base) // per_width))
