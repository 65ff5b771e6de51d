"""The base of the 28x28 grey-level sets stored as four IDX files (MNIST, Fashion-MNIST): find or download the
files, check their checksums and structure, decode them once, shift and scale batches."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from capsules.datasets.download import ensure_files
from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import data_dir, md5_hex, read_bytes
from capsules.datasets.idx_format import parse_idx
from capsules.datasets.in_memory import InMemoryImages
from capsules.datasets.options import (
    expect_int,
    expect_loader_options,
)
from capsules.datasets.transforms import random_shift, scale_pixels

IMAGE_SIZE = 28
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class IDXDigits(InMemoryImages):
    """(image float [1, 28, 28], label int) items from one split of a set of four IDX files.

    Subclasses name the set: `folder` (under $CAPSULES_DATA), `title` (in messages), `mirrors`, `mean` and `std`
    (of the training pixels scaled to [0, 1]), `class_names`, and `checksums()` (MD5 of each file's decompressed
    content, read when the set is loaded so that tests can patch the module's table).

    Files are looked up in `root` (default `$CAPSULES_DATA/<folder>`, else `~/.cache/capsule-routing/<folder>`) as
    `train-images-idx3-ubyte` etc., gzip-compressed (`.gz`) or not, and downloaded from `mirrors` (default: the
    set's own) when missing and `download` is True. With `verify`, each file's checksum must be the published one.

    Training augmentation (Sabour et al. 2017): each item is shifted by up to `max_shift` pixels with zero padding
    (default 2 when `train`, 0 otherwise; at most 27). Pixels are in [0, 1], or standardised with the set's `mean`
    and `std` when `normalize` (the padding is a black pixel either way).

    Attributes: `images` uint8 [N, 1, 28, 28] and `labels` int64 [N], decoded once; `preprocess` turns a uint8
    batch into the float batch items are made of, so a training loop can index `tensors()` directly.
    """

    folder: str
    title: str
    mirrors: tuple[str, ...]
    mean: float
    std: float
    class_names: tuple[str, ...]

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        download: bool = True,
        *,
        max_shift: int | None = None,
        normalize: bool = False,
        verify: bool = True,
        mirrors: Sequence[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        mirrors, timeout = expect_loader_options(root, train, download, normalize, verify, mirrors, timeout)
        self.train, self.normalize = train, normalize
        mirrors = mirrors or type(self).mirrors
        if max_shift is None:
            max_shift = 2 if train else 0
        self.max_shift = expect_int("max_shift", max_shift, 0, IMAGE_SIZE - 1,
                                    f" (a shift of {IMAGE_SIZE} pixels or more leaves the {IMAGE_SIZE}x{IMAGE_SIZE} "
                                    "images blank)")
        self.root = data_dir(root, self.folder)
        md5s = self.checksums()
        image_name, label_name = IDX_FILES[train]
        paths = ensure_files(self.root, (image_name, label_name), download=download, mirrors=mirrors, md5s=md5s,
                             decompressed_md5=True, timeout=timeout, dataset=self.title)
        images = _read_verified(paths[image_name], md5s[image_name] if verify else None)
        labels = _read_verified(paths[label_name], md5s[label_name] if verify else None)
        _check(images, labels, paths[image_name], paths[label_name], len(self.class_names))
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    @classmethod
    def checksums(cls) -> Mapping[str, str]:
        """MD5 of the decompressed content of each of the four files, by file name (without .gz)."""
        raise NotImplementedError(f"{cls.__name__} does not define checksums()")

    def preprocess(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 1, 28, 28] -> float32 [B, 1, 28, 28]: this dataset's random shift, scaling and normalisation."""
        shifted = random_shift(images, self.max_shift, generator) if self.max_shift else images
        return scale_pixels(shifted, self.mean, self.std) if self.normalize else scale_pixels(shifted)


def _read_verified(path: Path, md5: str | None) -> np.ndarray:
    """Decode one IDX file after checking the MD5 of its decompressed content (skipped when `md5` is None)."""
    data = read_bytes(path)
    if md5 is not None and (digest := md5_hex(data)) != md5:
        raise DatasetFileError(path, f"checksum mismatch: MD5 of the decompressed content is {digest}, expected {md5} "
                                     "(a corrupt or modified file; delete it to download it again)")
    return parse_idx(data, path)


def _check(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path, classes: int) -> None:
    """Raise DatasetFileError unless images are uint8 [N, 28, 28] and labels uint8 [N] in 0..classes-1."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetFileError(image_path,
                               f"expected uint8 images [N, 28, 28], found {images.dtype} {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetFileError(label_path, f"expected uint8 labels [N], found {labels.dtype} {list(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise DatasetFileError(label_path,
                               f"{labels.shape[0]} labels for {images.shape[0]} images in {image_path.name}")
    if labels.size and labels.max() >= classes:
        raise DatasetFileError(label_path, f"label {labels.max()} outside 0..{classes - 1}")
