"""SVHN (Netzer et al. 2011), the cropped digits: train_32x32.mat and test_32x32.mat, checksummed, read with scipy,
decoded once into memory, with the same shift augmentation as MNIST."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from capsules.datasets.download import ensure_files
from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import data_dir, md5_hex, read_bytes
from capsules.datasets.in_memory import InMemoryImages
from capsules.datasets.mat_format import integer_labels, parse_mat
from capsules.datasets.options import (
    expect_int,
    expect_loader_options,
)
from capsules.datasets.transforms import random_shift, scale_pixels

SVHN_MIRRORS = ("http://ufldl.stanford.edu/housenumbers/",)
SVHN_FILES = {True: "train_32x32.mat", False: "test_32x32.mat"}
# MD5 of the .mat files as the dataset's site serves them, as used by torchvision's SVHN loader
# (torchvision/datasets/svhn.py, split_list).
SVHN_MD5 = {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}
SVHN_CLASSES = tuple(str(digit) for digit in range(10))
# Per-channel mean and standard deviation of the 73,257 training images scaled to [0, 1] (the values in common use).
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMAGE_SIZE = 32


class SVHN(InMemoryImages):
    """SVHN cropped digits as (image float [3, 32, 32], label int) items; label is the digit 0..9.

    `train` picks train_32x32.mat (73,257 digits) or test_32x32.mat (26,032). Files are looked up in `root` (default
    `$CAPSULES_DATA/svhn`, else `~/.cache/capsule-routing/svhn`), gzip-compressed (`.gz`) or not, and downloaded
    from `mirrors` when missing and `download` is True. With `verify`, the MD5 of the .mat content must be the
    published one.

    The file holds X uint8 [32, 32, 3, N] (row, column, colour, image) and y [N, 1] with the digits 1..9 as
    themselves and 0 as 10; here label 10 becomes 0. Training augmentation: a random shift by up to `max_shift`
    pixels with zero padding (default 2 when `train`, else 0), as for MNIST (no flips: digits are not symmetric).
    Pixels are in [0, 1], or standardised per channel with SVHN_MEAN and SVHN_STD when `normalize`.

    Attributes: `images` uint8 [N, 3, 32, 32] and `labels` int64 [N].
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        download: bool = True,
        *,
        max_shift: int | None = None,
        normalize: bool = False,
        verify: bool = True,
        mirrors: Sequence[str] = SVHN_MIRRORS,
        timeout: float = 60.0,
    ) -> None:
        mirrors, timeout = expect_loader_options(root, train, download, normalize, verify, mirrors, timeout)
        self.train, self.normalize = train, normalize
        self.max_shift = expect_int("max_shift", (2 if train else 0) if max_shift is None else max_shift, 0,
                                    IMAGE_SIZE - 1, " (a shift of 32 pixels or more leaves the 32x32 images blank)")
        self.root = data_dir(root, "svhn")
        name = SVHN_FILES[train]
        path = ensure_files(self.root, [name], download=download, mirrors=mirrors, md5s=SVHN_MD5,
                            decompressed_md5=True, timeout=timeout, dataset="SVHN", remote_suffix="")[name]
        data = read_bytes(path)
        if verify and (digest := md5_hex(data)) != SVHN_MD5[name]:
            raise DatasetFileError(path, f"checksum mismatch: MD5 of the content is {digest}, expected "
                                         f"{SVHN_MD5[name]} (a corrupt or modified file; delete it to download it "
                                         "again)")
        content = parse_mat(data, ("X", "y"), path)
        images, digits = content["X"], content["y"]
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[:3] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            found = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
            raise DatasetFileError(path, f"expected X uint8 [32, 32, 3, N], found {found}")
        labels = integer_labels(digits, path, "y")
        if labels.shape[0] != images.shape[3] or digits.size != labels.shape[0]:
            raise DatasetFileError(path, f"y holds {digits.size} labels for {images.shape[3]} images")
        if labels.size and (labels.min() < 1 or labels.max() > 10):
            bad = int(labels[(labels < 1) | (labels > 10)][0])
            raise DatasetFileError(path, f"label {bad} outside 1..10 (10 stands for the digit 0)")
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1)))
        self.labels = torch.from_numpy(labels % 10)

    def preprocess(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 3, 32, 32] -> float32 [B, 3, 32, 32]: random shift (when set), scaling, normalisation."""
        if self.max_shift:
            images = random_shift(images, self.max_shift, generator)
        return scale_pixels(images, SVHN_MEAN, SVHN_STD) if self.normalize else scale_pixels(images)
