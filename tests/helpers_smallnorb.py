"""Writes small smallNORB splits (a few dozen pairs) in the real file format, for the loader's tests."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capsules.datasets.norb_format import write_matrix

PREFIX = {True: "smallnorb-5x46789x9x18x6x2x96x96-training", False: "smallnorb-5x01235x9x18x6x2x96x96-testing"}


@dataclass
class FakeSplit:
    """What was written: dat uint8 [N, 2, 96, 96], cat int32 [N], info int32 [N, 4], and the three paths."""

    dat: np.ndarray
    cat: np.ndarray
    info: np.ndarray
    paths: dict[str, Path]


def file_name(train: bool, kind: str) -> str:
    """The real file name of one split's "dat", "cat" or "info" file (uncompressed)."""
    return f"{PREFIX[train]}-{kind}.mat"


def write_split(directory: Path, train: bool = True, pairs: int = 36, gzip: bool = False, seed: int = 0) -> FakeSplit:
    """Write one split of `pairs` random stereo pairs; row i has elevation i % 9 and azimuth 2 * (i % 18).

    With 36 pairs or more, every elevation and azimuth occurs. Returns what was written.
    """
    rng = np.random.default_rng(seed)
    # Black and white pixels: after the 96 -> 48 resize an image keeps enough contrast that even the weakest
    # contrast jitter (x 0.2) leaves its std above per-image standardisation's floor of 1 / sqrt(pixels).
    dat = (rng.integers(0, 2, size=(pairs, 2, 96, 96)) * 255).astype(np.uint8)
    cat = rng.integers(0, 5, size=pairs).astype(np.int32)
    rows = np.arange(pairs)
    instances = np.array([4, 6, 7, 8, 9] if train else [0, 1, 2, 3, 5])
    info = np.stack([instances[rows % 5], rows % 9, 2 * (rows % 18), rows % 6], axis=1).astype(np.int32)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzip else ""
    paths = {kind: directory / (file_name(train, kind) + suffix) for kind in ("dat", "cat", "info")}
    for kind, array in (("dat", dat), ("cat", cat), ("info", info)):
        write_matrix(paths[kind], array, gzip=gzip)
    return FakeSplit(dat, cat, info, paths)
