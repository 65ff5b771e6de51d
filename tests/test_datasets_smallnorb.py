"""smallNORB loader on small splits written in the real file format."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_smallnorb import FakeSplit, file_name, write_split
from torch.utils.data import DataLoader

from capsules.datasets import DatasetFileError, SmallNORB
from capsules.datasets.norb_format import write_matrix
from capsules.datasets.transforms import standardize

FAMILIAR = {"azimuth": {0, 2, 4, 30, 32, 34}, "elevation": {0, 1, 2}}
COLUMN = {"elevation": 1, "azimuth": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("smallnorb")
    write_split(directory, train=True, pairs=36, seed=1)
    write_split(directory, train=False, pairs=40, gzip=True, seed=2)
    return directory


@pytest.fixture(scope="module")
def train_split(root) -> FakeSplit:
    return write_split(root, train=True, pairs=36, seed=1)  # the same bytes again: what the files hold


def _block_means(dat: np.ndarray) -> torch.Tensor:
    """Reference 96 -> 48 resize: the mean of each 2x2 block, rounded half to even."""
    n, c = dat.shape[:2]
    return torch.from_numpy(np.round(dat.reshape(n, c, 48, 2, 48, 2).mean(axis=(3, 5))).astype(np.uint8))


def test_loads_split_resized_with_labels_and_info(root, train_split):
    dataset = SmallNORB(root, train=True, download=False)
    assert dataset.images.shape == (36, 2, 48, 48) and dataset.images.dtype == torch.uint8
    assert torch.equal(dataset.images, _block_means(train_split.dat))
    assert torch.equal(dataset.labels, torch.from_numpy(train_split.cat).long())
    assert torch.equal(dataset.info, torch.from_numpy(train_split.info).long())
    test_set = SmallNORB(root, train=False, download=False)  # the .gz files
    assert len(test_set) == 40 and set(test_set.info[:, 0].tolist()) <= {0, 1, 2, 3, 5}


@pytest.mark.parametrize("view, channels", [(None, 2), ("left", 1), ("right", 1)])
@pytest.mark.parametrize("train", [True, False])
def test_items_are_standardised_crops(root, train_split, view, channels, train):
    dataset = SmallNORB(root, train=True, download=False, view=view, augment=train)
    expected = _block_means(train_split.dat)[:, {None: slice(0, 2), "left": slice(0, 1), "right": slice(1, 2)}[view]]
    assert torch.equal(dataset.images, expected)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert images.shape == (36, channels, 32, 32) and images.dtype == torch.float32
    flat = images.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(36), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, correction=0), torch.ones(36), atol=1e-4, rtol=0)
    if not train:
        torch.testing.assert_close(images, standardize(expected[:, :, 8:40, 8:40].float() / 255))


def test_training_crops_are_random_and_reproducible(root):
    dataset = SmallNORB(root, train=True, download=False)
    batch = dataset.images[:8]
    first = dataset.preprocess(batch, torch.Generator().manual_seed(0))
    assert torch.equal(first, dataset.preprocess(batch, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, dataset.preprocess(batch, torch.Generator().manual_seed(1)))
    assert dataset.augment and not SmallNORB(root, train=False, download=False).augment
    images, labels = next(iter(DataLoader(dataset, batch_size=16, shuffle=True)))
    assert images.shape == (16, 2, 32, 32) and labels.dtype == torch.int64


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("axis", ["azimuth", "elevation"])
def test_viewpoint_splits_select_exactly_the_stated_indices(root, axis, train):
    full = SmallNORB(root, train=train, download=False)
    familiar = SmallNORB(root, train=train, download=False, viewpoints=f"{axis}-familiar")
    novel = SmallNORB(root, train=train, download=False, viewpoints=f"{axis}-novel")
    values = full.info[:, COLUMN[axis]]
    mask = torch.tensor([v in FAMILIAR[axis] for v in values.tolist()])
    assert set(familiar.info[:, COLUMN[axis]].tolist()) == FAMILIAR[axis]
    assert set(novel.info[:, COLUMN[axis]].tolist()) == set(values.tolist()) - FAMILIAR[axis]
    for subset, rows in ((familiar, mask), (novel, ~mask)):
        assert torch.equal(subset.info, full.info[rows]) and torch.equal(subset.labels, full.labels[rows])
        assert torch.equal(subset.images, full.images[rows])


def test_rejects_unknown_arguments(root):
    with pytest.raises(ValueError, match="viewpoints must be"):
        SmallNORB(root, download=False, viewpoints="azimuth")
    with pytest.raises(ValueError, match="view must be"):
        SmallNORB(root, download=False, view="both")


def test_missing_files_without_download(tmp_path):
    write_split(tmp_path, train=True, pairs=5).paths["info"].unlink()
    with pytest.raises(FileNotFoundError) as caught:
        SmallNORB(tmp_path, train=True, download=False)
    assert file_name(True, "info") in str(caught.value) and str(tmp_path) in str(caught.value)
    assert file_name(True, "dat") not in str(caught.value)


def _patch_header(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(data))


def _rewrite(kind: str, make):
    """Damage: replace the `kind` file of a fresh split with make(split)."""
    def damage(split: FakeSplit) -> None:
        write_matrix(split.paths[kind], make(split))
    return kind, damage


def _edit_bytes(kind: str, edit):
    def damage(split: FakeSplit) -> None:
        split.paths[kind].write_bytes(edit(split.paths[kind].read_bytes()))
    return kind, damage


def _edit_header(kind: str, offset: int, value: int):
    def damage(split: FakeSplit) -> None:
        _patch_header(split.paths[kind], offset, value)
    return kind, damage


def _bad_label(split: FakeSplit) -> np.ndarray:
    cat = split.cat.copy()
    cat[3] = 7
    return cat


def _bad_azimuth(split: FakeSplit) -> np.ndarray:
    info = split.info.copy()
    info[2, 2] = 3
    return info


BAD_FILES = {
    "wrong magic": (_edit_header("dat", 0, 0x1E3D4C50), "wrong magic 0x1E3D4C50"),
    "dat truncated": (_edit_bytes("dat", lambda data: data[:-96]), "truncated"),
    "dat trailing bytes": (_edit_bytes("dat", lambda data: data + b"\0" * 8), "trailing bytes"),
    "dat header lies": (_edit_header("dat", 8, 13), "size does not match the header"),
    "unused dim not 1": (_edit_header("cat", 16, 2), "unused dims must be 1"),
    "dat three views": (_rewrite("dat", lambda s: np.zeros((12, 3, 96, 96), np.uint8)), r"\[12, 3, 96, 96\]"),
    "dat wrong size": (_rewrite("dat", lambda s: np.zeros((12, 2, 64, 64), np.uint8)), r"\[N, 2, 96, 96\]"),
    "dat not bytes": (_rewrite("dat", lambda s: s.dat.astype(np.int32)), "found int32"),
    "cat not int32": (_rewrite("cat", lambda s: s.cat.astype(np.float32)), "found float32"),
    "cat fewer rows": (_rewrite("cat", lambda s: s.cat[:-1]), "11 rows for 12 image pairs"),
    "info more rows": (_rewrite("info", lambda s: np.concatenate([s.info, s.info[:1]])), "13 rows for 12"),
    "info three columns": (_rewrite("info", lambda s: s.info[:, :3]), r"info \[N, 4\]"),
    "label out of range": (_rewrite("cat", _bad_label), "label 7 at row 3 outside 0..4"),
    "azimuth out of range": (_rewrite("info", _bad_azimuth), "azimuth 3 at row 2"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_naming_the_file(tmp_path, case):
    (kind, damage), problem = BAD_FILES[case]
    split = write_split(tmp_path, train=True, pairs=12)
    damage(split)
    with pytest.raises(DatasetFileError, match=problem) as caught:
        SmallNORB(tmp_path, train=True, download=False)
    assert caught.value.path == str(split.paths[kind])


def test_corrupt_gzip(tmp_path):
    split = write_split(tmp_path, train=False, pairs=12, gzip=True)
    data = bytearray(split.paths["dat"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    split.paths["dat"].write_bytes(bytes(data))
    with pytest.raises(DatasetFileError, match="gzip") as caught:
        SmallNORB(tmp_path, train=False, download=False)
    assert caught.value.path == str(split.paths["dat"])
