"""The official affNIST files (Tieleman 2013), for users who have them: MNIST digits on a 40x40 canvas under random
affine maps, the test set on which Sabour et al. (2017) measured affine generalisation.

Layout, as documented on the affNIST page (https://www.cs.toronto.edu/~tijmen/affNIST/, "Data representation") and
read by the public affNIST loaders: MATLAB version 5 .mat files, each with one struct `affNISTdata` whose fields hold
one column per example: `image` uint8 [1600, N] (a 40x40 image, row-major: pixel (r, c) at r * 40 + c), `label_int`
[1, N] (the digit 0..9), and `label_one_of_n`, `affine_transform`, `inverse_affine_transform`,
`human_readable_transform` and `index`, which this loader does not need. The transformed test set comes as
`test.mat` (test.mat.zip: all 320,000 examples, 32 transformed versions of each of the 10,000 MNIST test digits) or
as `test_batches/1.mat` .. `32.mat` (test_batches.zip: 10,000 each); the training set as `training.mat` or
`training_batches/1.mat` .. `32.mat`. The untransformed ("just centered") files have the same layout.

No checksum of these files is published, so nothing is downloaded and the files are checked by structure instead:
the struct and its two fields, uint8 images of 1600 pixels, as many labels as images, labels in 0..9.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import data_dir, find_file
from capsules.datasets.in_memory import InMemoryImages
from capsules.datasets.mat_format import integer_labels, read_mat
from capsules.datasets.options import expect_bool, expect_root
from capsules.datasets.transforms import scale_pixels

AFFNIST_PAGE = "https://www.cs.toronto.edu/~tijmen/affNIST/"
AFFNIST_CANVAS = 40
AFFNIST_BATCHES = 32
_FILES = {False: ("test.mat", "test_batches"), True: ("training.mat", "training_batches")}


class AffNIST(InMemoryImages):
    """The official affNIST files as (image float [1, 40, 40], label int) items, pixels in [0, 1].

    `train` False reads the test set, True the training set, from `root` (default `$CAPSULES_DATA/affnist`, else
    `~/.cache/capsule-routing/affnist`): the batch files `<split>_batches/<k>.mat` (or `<k>.mat` in `root`) for
    each k in `batches` (1..32) when given; otherwise the whole set, `test.mat` / `training.mat`, or else all 32
    batch files. Files may be gzip-compressed (`.gz`). `download` must stay False: no checksum is published to
    verify a download against, so a missing file raises FileNotFoundError saying where to get it.

    Attributes: `images` uint8 [N, 1, 40, 40] and `labels` int64 [N], in file and batch order.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = False,
        download: bool = False,
        *,
        batches: Sequence[int] | None = None,
    ) -> None:
        expect_root(root)
        self.train = expect_bool("train", train)
        expect_bool("download", download)
        self.batches = _check_batches(batches)
        self.root = data_dir(root, "affnist")
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"affNIST: {self.root} is a file, expected the folder that holds the .mat files")
        paths = _find(self.root, train, self.batches, download)
        images, labels = zip(*(_read_file(path) for path in paths), strict=True)
        self.images = torch.from_numpy(np.concatenate(images)).unsqueeze(1)
        self.labels = torch.from_numpy(np.concatenate(labels))

    def preprocess(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 1, 40, 40] -> float32 [B, 1, 40, 40] in [0, 1] (a test set: no augmentation)."""
        return scale_pixels(images)


def _check_batches(batches: Sequence[int] | None) -> tuple[int, ...] | None:
    if batches is None:
        return None
    if isinstance(batches, str | bytes) or not isinstance(batches, Sequence) or not batches or any(
            isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= AFFNIST_BATCHES for k in batches):
        raise ValueError(f"batches must be None or a non-empty list of batch numbers in 1..{AFFNIST_BATCHES}, "
                         f"got {batches!r}")
    return tuple(batches)


def _find(root: Path, train: bool, batches: tuple[int, ...] | None, download: bool) -> list[Path]:
    """The files to read, in order; FileNotFoundError naming what is missing and where to get it."""
    whole, folder = _FILES[train]
    if batches is None and (path := find_file(root, whole)) is not None:
        return [path]
    wanted = batches or tuple(range(1, AFFNIST_BATCHES + 1))
    found = {k: find_file(root / folder, f"{k}.mat") or find_file(root, f"{k}.mat") for k in wanted}
    missing = [k for k, path in found.items() if path is None]
    if not missing:
        return [found[k] for k in wanted]
    asked = f"{folder}/<k>.mat for k = {', '.join(map(str, missing))}"
    either = "" if batches else f"{whole} (from {whole}.zip), or "
    refused = ("affNIST is not downloaded automatically (no checksum is published to verify it against). "
               if download else "")
    raise FileNotFoundError(f"affNIST files missing from {root}: {either}{asked} ({len(missing)} of the batch "
                            f"files, from {folder}.zip). {refused}Download them from {AFFNIST_PAGE} (the "
                            f"'transformed' set), unzip them into {root}, or pass root=<a folder that has them>.")


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 [N, 40, 40] and labels int64 [N] of one affNIST .mat file."""
    struct = read_mat(path, ["affNISTdata"])["affNISTdata"]
    fields = struct.dtype.names if isinstance(struct, np.ndarray) else None
    if not fields or "image" not in fields or "label_int" not in fields or struct.size != 1:
        raise DatasetFileError(path, f"expected affNISTdata as one struct with fields image and label_int, found "
                                     f"{'fields ' + ', '.join(fields) if fields else type(struct).__name__}")
    image, label = struct["image"].item(), struct["label_int"].item()
    pixels = AFFNIST_CANVAS * AFFNIST_CANVAS
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2 or image.shape[0] != pixels:
        found = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DatasetFileError(path, f"expected image uint8 [{pixels}, N], found {found}")
    labels = integer_labels(label, path, "label_int")
    if labels.shape[0] != image.shape[1]:
        raise DatasetFileError(path, f"{labels.shape[0]} labels (label_int) for {image.shape[1]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = int(labels[(labels < 0) | (labels > 9)][0])
        raise DatasetFileError(path, f"label_int {bad} outside 0..9")
    return np.ascontiguousarray(image.T).reshape(-1, AFFNIST_CANVAS, AFFNIST_CANVAS), labels


def write_affnist_file(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray) -> None:
    """Write images uint8 [N, 40, 40] and labels [N] as an affNIST .mat file (the fields this loader reads, plus
    label_one_of_n), for tests and for sets built in the same layout."""
    from scipy.io import savemat

    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.uint8)
    if images.ndim != 3 or images.shape[1:] != (AFFNIST_CANVAS, AFFNIST_CANVAS) or labels.shape != images.shape[:1]:
        raise ValueError(f"expected images [N, 40, 40] and labels [N], got {list(images.shape)} and "
                         f"{list(labels.shape)}")
    one_of_n = (labels[None, :] == np.arange(10)[:, None]).astype(np.uint8)
    savemat(path, {"affNISTdata": {"image": images.reshape(len(images), -1).T, "label_int": labels[None, :],
                                   "label_one_of_n": one_of_n}})
