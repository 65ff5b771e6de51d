"""The CapsNet of Sabour, Frosst & Hinton 2017 (MNIST), with any routing algorithm."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from capsules.layers import CapsuleLinear, PrimaryCaps, ReconstructionDecoder
from capsules.layers.checks import expect_positive_ints, expect_shape
from capsules.models.output import CapsuleOutput
from capsules.models.registry import register_model


@register_model("capsnet")
class CapsNet(nn.Module):
    """Conv1 256 x 9x9 ReLU; PrimaryCaps 32 types x 8D, 9x9 stride 2 (6x6x32 = 1152 capsules on 28x28 input);
    DigitCaps `classes` x 16D (W 1152 x 10 x 16 x 8, no bias), routed by `routing`; decoder 512-1024-784 sigmoid.

    Parameters on MNIST: 6,804,224 without the decoder, 8,215,568 with it (plus the router's own, e.g. EM's
    beta_u and beta_a per class). The primary capsules reach the router as squashed vectors without separate
    activations (their lengths are their activations, as in the paper).

    ``forward(images [B, in_channels, image_size, image_size], labels [B] or None) -> CapsuleOutput``: the decoder
    is fed the label's capsule in training mode (when labels are given), the longest capsule otherwise.
    """

    def __init__(
        self,
        routing: str = "dynamic",
        routing_options: dict[str, Any] | None = None,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        classes: int = 10,
        decoder: bool = True,
    ):
        super().__init__()
        expect_positive_ints(in_channels=in_channels, image_size=image_size, classes=classes)
        self.in_channels, self.image_size, self.classes = in_channels, image_size, classes
        self.conv1 = nn.Conv2d(in_channels, 256, kernel_size=9)
        self.primary = PrimaryCaps(256, 32, kernel_size=9, stride=2, pose="vector", dim=8)
        grid = (image_size - 8 - 9) // 2 + 1
        if grid < 1:
            raise ValueError(f"CapsNet needs images of at least 17x17 pixels, got image_size={image_size}")
        self.digits = CapsuleLinear(grid * grid * 32, 8, classes, 16, routing, **(routing_options or {}))
        self.decoder = ReconstructionDecoder(classes, 16, (in_channels, image_size, image_size)) if decoder else None

    def forward(self, images: Tensor, labels: Tensor | None = None) -> CapsuleOutput:
        size = self.image_size
        expect_shape(images, (None, self.in_channels, size, size), "[B, C, H, W]", "CapsNet images")
        poses, _ = self.primary(F.relu(self.conv1(images)))
        poses, activations = self.digits(poses.flatten(1, 3))
        reconstruction = None if self.decoder is None else self.decoder(poses, activations, labels)
        return CapsuleOutput(activations, poses, reconstruction)
