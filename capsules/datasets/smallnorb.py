"""smallNORB: the dat, cat and info files of one split, checked, resized once, with the papers' preprocessing."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from capsules.datasets.download import ensure_files
from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import data_dir
from capsules.datasets.in_memory import InMemoryImages
from capsules.datasets.norb_format import read_matrix
from capsules.datasets.options import (
    expect_bool,
    expect_mirrors,
    expect_optional_bool,
    expect_positive_seconds,
    expect_root,
)
from capsules.datasets.transforms import (
    center_crop,
    random_brightness,
    random_contrast,
    random_crop,
    resize_area,
    standardize,
)

SMALLNORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
_PREFIX = {True: "smallnorb-5x46789x9x18x6x2x96x96-training", False: "smallnorb-5x01235x9x18x6x2x96x96-testing"}
# MD5 of the .gz downloads (the uncompressed files have no published checksum).
SMALLNORB_MD5 = {
    f"{_PREFIX[True]}-dat.mat": "66054832f9accfe74a0f4c36a75bc0a2",
    f"{_PREFIX[True]}-cat.mat": "23c8b86101fbf0904a000b43d3ed2fd9",
    f"{_PREFIX[True]}-info.mat": "51dee1210a742582ff607dfd94e332e3",
    f"{_PREFIX[False]}-dat.mat": "e4ad715691ed5a3a5f138751a4ceb071",
    f"{_PREFIX[False]}-cat.mat": "5aa791cd7e6016cf957ce9bdb93b8603",
    f"{_PREFIX[False]}-info.mat": "a9454f3864d7fd4bb3ea7fc3eb84924e",
}
CLASSES = ("animal", "human", "airplane", "truck", "car")
INFO_COLUMNS = ("instance", "elevation", "azimuth", "lighting")
_INFO_RANGES = {"instance": range(10), "elevation": range(9), "azimuth": range(0, 35, 2), "lighting": range(6)}
# Hinton, Sabour, Frosst 2018, novel viewpoints: (info column, the familiar values).
_FAMILIAR = {"azimuth": (0, 2, 4, 30, 32, 34), "elevation": (0, 1, 2)}
VIEWPOINTS = ("azimuth-familiar", "azimuth-novel", "elevation-familiar", "elevation-novel")
IMAGE_SIZE, RESIZED, CROP = 96, 48, 32
BRIGHTNESS_DELTA, CONTRAST_RANGE = 63 / 255, (0.2, 1.8)
_VIEWS = {None: slice(0, 2), "left": slice(0, 1), "right": slice(1, 2)}
_RESIZE_CHUNK = 1024  # pairs resized at a time: bounds the float32 copy to about 75 MB


class SmallNORB(InMemoryImages):
    """smallNORB as (image float [C, 32, 32], label int) items, C = 2 (stereo pair) or 1 (`view` "left"/"right").

    `train` picks the file: training (instances 4, 6, 7, 8, 9) or testing (instances 0, 1, 2, 3, 5). Files are looked
    up in `root` (default `$CAPSULES_DATA/smallnorb`, else `~/.cache/capsule-routing/smallnorb`), gzip-compressed
    (`.gz`) or not, and downloaded from `mirrors` when missing and `download` is True (the .gz MD5s are checked on
    download; files on disk are checked structurally: header, sizes, agreeing counts, value ranges).

    `viewpoints` keeps only the rows of that file with the chosen views (Hinton et al. 2018):
    "azimuth-familiar" = azimuth in {0, 2, 4, 30, 32, 34} (x10 degrees), "azimuth-novel" = the other 12 azimuths,
    "elevation-familiar" = elevation in {0, 1, 2}, "elevation-novel" = the other six. The paper's protocol trains on
    `train=True` with a "-familiar" set and tests with `train=False` on the "-novel" set (and on the "-familiar" set to
    match familiar-view error); every combination is allowed and filters the file `train` picks.

    Preprocessing (Hinton et al. 2018): every image is resized 96 -> 48 once at load (kept as uint8); items are a
    random 32x32 crop with random brightness (+-63/255) and contrast (x 0.2..1.8) when `augment` (default: `train`),
    else the centre crop; then per-image standardisation. For a single view, standardisation undoes brightness and
    contrast exactly, as in the papers' pipeline.

    Attributes: `images` uint8 [N, C, 48, 48], `labels` int64 [N] (index into CLASSES), `info` int64 [N, 4] with
    columns INFO_COLUMNS = (instance, elevation, azimuth, lighting).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        download: bool = True,
        viewpoints: str | None = None,
        *,
        view: str | None = None,
        augment: bool | None = None,
        mirrors: Sequence[str] = (SMALLNORB_URL,),
        timeout: float = 60.0,
    ) -> None:
        expect_root(root)
        expect_bool("train", train)
        expect_bool("download", download)
        if viewpoints is not None and viewpoints not in VIEWPOINTS:
            raise ValueError(f"viewpoints must be None or one of {VIEWPOINTS}, got {viewpoints!r}")
        if view not in _VIEWS:
            raise ValueError(f"view must be None, 'left' or 'right', got {view!r}")
        mirrors = expect_mirrors(mirrors)
        timeout = expect_positive_seconds("timeout", timeout)
        self.root = data_dir(root, "smallnorb")
        self.train, self.viewpoints, self.view = train, viewpoints, view
        self.augment = train if expect_optional_bool("augment", augment) is None else augment
        names = [f"{_PREFIX[train]}-{kind}.mat" for kind in ("dat", "cat", "info")]
        paths = ensure_files(self.root, names, download=download, mirrors=mirrors, md5s=SMALLNORB_MD5,
                             decompressed_md5=False, timeout=timeout, dataset="smallNORB")
        dat_path, cat_path, info_path = (paths[name] for name in names)
        dat, cat, info = _read_split(dat_path, cat_path, info_path)
        rows = np.flatnonzero(_viewpoint_mask(info, viewpoints))
        self.images = _resize_rows(dat, rows, _VIEWS[view])
        self.labels = torch.from_numpy(cat[rows].astype(np.int64))
        self.info = torch.from_numpy(info[rows].astype(np.int64))

    def preprocess(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, C, 48, 48] -> float32 [B, C, 32, 32]: crop (random or centre), jitter if augmenting, standardise.

        Augmentation draws from `generator` (CPU), or torch's global generator when None.
        """
        if not self.augment:
            return standardize(center_crop(images, CROP).to(torch.float32) / 255)
        pixels = random_crop(images, CROP, generator).to(torch.float32) / 255
        pixels = random_brightness(pixels, BRIGHTNESS_DELTA, generator)
        return standardize(random_contrast(pixels, *CONTRAST_RANGE, generator))


def _read_split(dat_path: Path, cat_path: Path, info_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and cross-check one split: dat uint8 [N, 2, 96, 96], cat int32 [N] in 0..4, info int32 [N, 4] in range."""
    dat = read_matrix(dat_path)
    if dat.dtype != np.uint8 or dat.ndim != 4 or dat.shape[1:] != (2, IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetFileError(dat_path, f"expected uint8 stereo pairs [N, 2, 96, 96], found {dat.dtype} "
                                         f"{list(dat.shape)}")
    cat = read_matrix(cat_path)
    if cat.dtype != np.int32 or cat.ndim != 1:
        raise DatasetFileError(cat_path, f"expected int32 labels [N], found {cat.dtype} {list(cat.shape)}")
    info = read_matrix(info_path)
    if info.dtype != np.int32 or info.ndim != 2 or info.shape[1] != len(INFO_COLUMNS):
        raise DatasetFileError(info_path, f"expected int32 info [N, 4], found {info.dtype} {list(info.shape)}")
    for path, array in ((cat_path, cat), (info_path, info)):
        if array.shape[0] != dat.shape[0]:
            raise DatasetFileError(path, f"{array.shape[0]} rows for {dat.shape[0]} image pairs in {dat_path.name}")
    if bad := np.flatnonzero((cat < 0) | (cat >= len(CLASSES))).tolist():
        raise DatasetFileError(cat_path, f"label {cat[bad[0]]} at row {bad[0]} outside 0..{len(CLASSES) - 1}")
    for column, (name, allowed) in enumerate(_INFO_RANGES.items()):
        if bad := np.flatnonzero(~np.isin(info[:, column], allowed)).tolist():
            raise DatasetFileError(info_path, f"{name} {info[bad[0], column]} at row {bad[0]} is not one of "
                                              f"{allowed.start}..{allowed.stop - 1} step {allowed.step}")
    return dat, cat, info


def _viewpoint_mask(info: np.ndarray, viewpoints: str | None) -> np.ndarray:
    """bool [N]: the rows of info [N, 4] in the `viewpoints` set (all rows for None)."""
    if viewpoints is None:
        return np.ones(info.shape[0], dtype=bool)
    column, kind = viewpoints.split("-")
    familiar = np.isin(info[:, INFO_COLUMNS.index(column)], _FAMILIAR[column])
    return familiar if kind == "familiar" else ~familiar


def _resize_rows(dat: np.ndarray, rows: np.ndarray, views: slice) -> torch.Tensor:
    """uint8 [len(rows), C, 48, 48]: the chosen rows and views of dat [N, 2, 96, 96], resized a chunk at a time."""
    out = torch.empty((len(rows), views.stop - views.start, RESIZED, RESIZED), dtype=torch.uint8)
    for start in range(0, len(rows), _RESIZE_CHUNK):
        chunk = torch.from_numpy(dat[rows[start:start + _RESIZE_CHUNK], views])
        out[start:start + _RESIZE_CHUNK] = resize_area(chunk, RESIZED)
    return out
