"""MNIST: the four IDX files, checksummed, decoded once into memory, with the papers' shift augmentation."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from capsules.datasets.download import ensure_files
from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import data_dir, md5_hex, read_bytes
from capsules.datasets.idx_format import parse_idx
from capsules.datasets.in_memory import InMemoryImages
from capsules.datasets.transforms import random_shift, scale_pixels

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# MD5 of the decompressed files: the .gz bytes differ between mirrors and recompressed copies.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class MNIST(InMemoryImages):
    """MNIST as (image float [1, 28, 28], label int) items.

    Files are looked up in `root` (default `$CAPSULES_DATA/mnist`, else `~/.cache/capsule-routing/mnist`) as
    `train-images-idx3-ubyte` etc., gzip-compressed (`.gz`) or not, and downloaded from `mirrors` when missing and
    `download` is True. With `verify`, the MD5 of each file's decompressed content must be the published one.

    Training augmentation (Sabour et al. 2017): each item is shifted by up to `max_shift` pixels with zero padding
    (default 2 when `train`, 0 otherwise). Pixels are in [0, 1], or standardised with mean 0.1307 and std 0.3081
    when `normalize` (the padding is a black pixel either way).

    Attributes: `images` uint8 [N, 1, 28, 28] and `labels` int64 [N], decoded once; `preprocess` turns a uint8
    batch into the float batch items are made of, so a training loop can index `tensors()` directly.
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
        mirrors: Sequence[str] = MNIST_MIRRORS,
        timeout: float = 30.0,
    ) -> None:
        self.root = data_dir(root, "mnist")
        self.train = train
        self.max_shift = (2 if train else 0) if max_shift is None else max_shift
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.normalize = normalize
        image_name, label_name = _FILES[train]
        paths = ensure_files(self.root, (image_name, label_name), download=download, mirrors=mirrors, md5s=MNIST_MD5,
                             decompressed_md5=True, timeout=timeout, dataset="MNIST")
        images = _read_verified(paths[image_name], MNIST_MD5[image_name] if verify else None)
        labels = _read_verified(paths[label_name], MNIST_MD5[label_name] if verify else None)
        _check(images, labels, paths[image_name], paths[label_name])
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def preprocess(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 1, 28, 28] -> float32 [B, 1, 28, 28]: this dataset's random shift, scaling and normalisation."""
        shifted = random_shift(images, self.max_shift, generator) if self.max_shift else images
        return scale_pixels(shifted, MNIST_MEAN, MNIST_STD) if self.normalize else scale_pixels(shifted)


def _read_verified(path: Path, md5: str | None) -> np.ndarray:
    """Decode one IDX file after checking the MD5 of its decompressed content (skipped when `md5` is None)."""
    data = read_bytes(path)
    if md5 is not None and (digest := md5_hex(data)) != md5:
        raise DatasetFileError(path, f"checksum mismatch: MD5 of the decompressed content is {digest}, expected {md5} "
                                     "(a corrupt or modified file; delete it to download it again)")
    return parse_idx(data, path)


def _check(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Raise DatasetFileError unless images are uint8 [N, 28, 28] and labels uint8 [N] in 0..9."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetFileError(image_path,
                               f"expected uint8 images [N, 28, 28], found {images.dtype} {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetFileError(label_path, f"expected uint8 labels [N], found {labels.dtype} {list(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise DatasetFileError(label_path,
                               f"{labels.shape[0]} labels for {images.shape[0]} images in {image_path.name}")
    if labels.size and labels.max() > 9:
        raise DatasetFileError(label_path, f"label {labels.max()} outside 0..9")
