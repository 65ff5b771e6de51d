"""CIFAR-10 (Krizhevsky 2009): the python batches, read from the archive or from its extracted folder, checksummed,
decoded once into memory, with random crops (zero padding 4) and horizontal flips for training."""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from capsules.datasets.cifar_format import parse_batch
from capsules.datasets.download import ensure_files
from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import data_dir, md5_hex, read_bytes
from capsules.datasets.in_memory import InMemoryImages
from capsules.datasets.options import (
    expect_int,
    expect_loader_options,
    expect_optional_bool,
)
from capsules.datasets.transforms import random_horizontal_flip, random_shift, scale_pixels

CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"  # the folder inside the archive
# MD5 of the archive and of each extracted batch, as published by the dataset's page and used by torchvision's
# CIFAR10 loader (torchvision/datasets/cifar.py: tgz_md5, train_list, test_list).
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_BATCHES = {True: tuple(f"data_batch_{index}" for index in range(1, 6)), False: ("test_batch",)}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean and standard deviation of the 50,000 training images scaled to [0, 1] (the values in common use).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGE_SIZE = 32


class CIFAR10(InMemoryImages):
    """CIFAR-10 as (image float [3, 32, 32], label int) items; label indexes CIFAR10_CLASSES.

    `train` picks data_batch_1..5 (50,000 images) or test_batch (10,000). They are read from `root` (default
    `$CAPSULES_DATA/cifar10`, else `~/.cache/capsule-routing/cifar10`): from the extracted folder
    `cifar-10-batches-py/` (or the batch files directly in `root`) when it has them, else from the archive
    `cifar-10-python.tar.gz`, which is downloaded from `mirrors` when missing and `download` is True (its MD5 is
    checked on download). With `verify`, every batch must have its published MD5 (checked before it is unpickled).

    Training augmentation (as the capsule papers on CIFAR-10 and most CIFAR training code): a random 32x32 crop of
    the image padded with 4 black pixels, i.e. a random shift by up to `max_shift` pixels (default 4 when `train`,
    else 0), and a random horizontal flip when `flip` (default `train`). Pixels are in [0, 1], or standardised per
    channel with CIFAR10_MEAN and CIFAR10_STD when `normalize`.

    Attributes: `images` uint8 [N, 3, 32, 32] and `labels` int64 [N].
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        download: bool = True,
        *,
        max_shift: int | None = None,
        flip: bool | None = None,
        normalize: bool = False,
        verify: bool = True,
        mirrors: Sequence[str] = CIFAR10_MIRRORS,
        timeout: float = 60.0,
    ) -> None:
        mirrors, timeout = expect_loader_options(root, train, download, normalize, verify, mirrors, timeout)
        self.train, self.normalize = train, normalize
        self.max_shift = expect_int("max_shift", (4 if train else 0) if max_shift is None else max_shift, 0,
                                    IMAGE_SIZE - 1, " (a shift of 32 pixels or more leaves the 32x32 images blank)")
        self.flip = train if expect_optional_bool("flip", flip) is None else flip
        self.root = data_dir(root, "cifar10")
        names = CIFAR10_BATCHES[train]
        batches = _read_batches(self.root, names, download, mirrors, timeout)
        decoded = []
        for name, (source, data) in zip(names, batches, strict=True):
            if verify and (digest := md5_hex(data)) != CIFAR10_MD5[name]:
                raise DatasetFileError(source, f"checksum mismatch: MD5 is {digest}, expected {CIFAR10_MD5[name]} (a "
                                               "corrupt, modified or foreign file; delete it to download it again)")
            decoded.append(parse_batch(data, source))
        self.images = torch.from_numpy(np.concatenate([images for images, _ in decoded]))
        self.labels = torch.from_numpy(np.concatenate([labels for _, labels in decoded]))

    def preprocess(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 3, 32, 32] -> float32 [B, 3, 32, 32]: random shift and flip (when set), scaling, normalisation."""
        if self.max_shift:
            images = random_shift(images, self.max_shift, generator)
        if self.flip:
            images = random_horizontal_flip(images, generator)
        return scale_pixels(images, CIFAR10_MEAN, CIFAR10_STD) if self.normalize else scale_pixels(images)


def _read_batches(root: Path, names: Sequence[str], download: bool, mirrors: Sequence[str],
                  timeout: float) -> list[tuple[str, bytes]]:
    """(where it came from, content) of each batch in `names`: extracted files if all are there, else the archive's
    members (the archive found or downloaded)."""
    for folder in (root / CIFAR10_FOLDER, root):
        paths = [folder / name for name in names]
        if all(path.is_file() for path in paths):
            return [(str(path), read_bytes(path)) for path in paths]
    archive = ensure_files(root, [CIFAR10_ARCHIVE], download=download, mirrors=mirrors,
                           md5s={CIFAR10_ARCHIVE: CIFAR10_ARCHIVE_MD5}, decompressed_md5=False, timeout=timeout,
                           dataset="CIFAR-10", remote_suffix="",
                           form=f"or the folder {CIFAR10_FOLDER} extracted from it")[CIFAR10_ARCHIVE]
    return _archive_members(archive, names)


def _archive_members(archive: Path, names: Sequence[str]) -> list[tuple[str, bytes]]:
    """The content of cifar-10-batches-py/<name> for each name, read from the (gzip-compressed) tar archive."""
    found = []
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for name in names:
                member = f"{CIFAR10_FOLDER}/{name}"
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    handle = None
                if handle is None:
                    raise DatasetFileError(archive, f"the archive has no file {member} (not the CIFAR-10 python "
                                                    "archive?)")
                found.append((f"{archive}:{member}", handle.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DatasetFileError(archive, f"corrupt or truncated archive ({error}); delete it to download it "
                                        "again") from error
    return found
