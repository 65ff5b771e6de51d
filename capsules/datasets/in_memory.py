"""The base of the image datasets decoded once into memory (MNIST, smallNORB)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class InMemoryImages(Dataset[tuple[torch.Tensor, int]]):
    """(image float [C, H, W], label int) items from `images` uint8 [N, C, H0, W0] and `labels` int64 [N], which
    subclasses set; `preprocess` (which subclasses define) turns a uint8 batch into the float batch items are made
    of, so a training loop can index `tensors()` directly and preprocess whole batches."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(self.images[index].unsqueeze(0))[0], int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images uint8 [N, C, H0, W0] and labels int64 [N] (the dataset's own tensors: do not modify)."""
        return self.images, self.labels

    def preprocess(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement preprocess()")
