"""The reconstruction decoder of Sabour et al. 2017, fed the class capsules masked to one class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from capsules.layers.checks import check_labels, expect_positive_ints, expect_shape


def mask_to_class(poses: Tensor, classes: Tensor) -> Tensor:
    """poses [B, K, D], classes [B] (long) -> [B, K*D] with every capsule but the chosen class's zeroed."""
    mask = torch.zeros(poses.shape[:2], dtype=poses.dtype, device=poses.device)
    mask.scatter_(1, classes.view(-1, 1), 1.0)
    return (poses * mask.unsqueeze(-1)).flatten(1)


class ReconstructionDecoder(nn.Module):
    """Fully connected layers from the masked class capsules to the image: ReLU between them, sigmoid at the end.

    Sabour's MNIST decoder: 10 x 16 -> 512 -> 1024 -> 784. In training mode the capsules are masked to the true
    label (when given); otherwise to the predicted class, the most active capsule (the longest, for vectors).

    ``forward(poses [B, classes, dim], activations [B, classes], labels [B] or None) -> [B, prod(image_shape)]``.
    """

    def __init__(self, classes: int, dim: int, image_shape: Sequence[int], hidden: Sequence[int] = (512, 1024)):
        super().__init__()
        expect_positive_ints(classes=classes, dim=dim, **{f"image_shape[{i}]": n for i, n in enumerate(image_shape)})
        self.classes, self.dim, self.image_shape = classes, dim, tuple(image_shape)
        sizes = [classes * dim, *hidden, int(torch.tensor(self.image_shape).prod())]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True) if i < len(sizes) - 2 else nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, poses: Tensor, activations: Tensor, labels: Tensor | None = None) -> Tensor:
        expect_shape(poses, (None, self.classes, self.dim), "[B, classes, dim]", "decoder poses")
        if labels is not None and self.training:
            chosen = check_labels(labels, poses.shape[0], self.classes)
        else:
            chosen = activations.argmax(dim=1)
        return self.layers(mask_to_class(poses, chosen))
