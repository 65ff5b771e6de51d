"""MNIST loader on small files written in the real formats (conftest's `small_mnist_root`), on small or tampered
copies, and on the real files in $CAPSULES_DATA/mnist (`real_mnist_dir`; those tests skip without them)."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from capsules.datasets import MNIST, DatasetFileError
from capsules.datasets.files import data_dir
from capsules.datasets.idx_format import read_idx, write_idx
from capsules.datasets.mnist import MNIST_MEAN, MNIST_STD

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def real_train_set(real_mnist_dir) -> MNIST:
    return MNIST(real_mnist_dir, train=True, download=False)


@pytest.fixture(scope="module")
def real_test_set(real_mnist_dir) -> MNIST:
    return MNIST(real_mnist_dir, train=False, download=False)


@pytest.fixture(scope="module")
def train_set(small_mnist_root) -> MNIST:
    return MNIST(small_mnist_root / "mnist", train=True, download=False, verify=False)


@pytest.fixture(scope="module")
def test_set(small_mnist_root) -> MNIST:
    return MNIST(small_mnist_root / "mnist", train=False, download=False, verify=False)


def matching_shifts(shifted: torch.Tensor, image: torch.Tensor, max_shift: int) -> list[tuple[int, int]]:
    """All (dy, dx) within max_shift with shifted[:, y, x] == image[:, y - dy, x - dx], zero outside."""
    height, width = image.shape[-2:]
    found = []
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            expected = torch.zeros_like(image)
            expected[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
                image[:, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
            if torch.equal(expected, shifted):
                found.append((dy, dx))
    return found


def test_sizes_labels_and_pixel_statistics(real_train_set, real_test_set):
    train_set, test_set = real_train_set, real_test_set
    assert train_set.images.shape == (60000, 1, 28, 28) and train_set.images.dtype == torch.uint8
    assert test_set.images.shape == (10000, 1, 28, 28) and test_set.labels.dtype == torch.int64
    assert len(train_set) == 60000 and len(test_set) == 10000
    assert torch.bincount(train_set.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_set.labels).tolist() == TEST_COUNTS
    assert train_set.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_set.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    pixels = train_set.images.float() / 255
    assert pixels.mean().item() == pytest.approx(MNIST_MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(MNIST_STD, abs=1e-4)


def test_written_files_decode_to_their_arrays(train_set, test_set, small_mnist_root):
    for dataset, prefix in ((train_set, "train"), (test_set, "t10k")):
        images = read_idx(small_mnist_root / "mnist" / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(small_mnist_root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz")
        assert dataset.images.shape == (len(images), 1, 28, 28) and dataset.images.dtype == torch.uint8
        assert dataset.labels.dtype == torch.int64 and len(dataset) == len(labels)
        assert torch.equal(dataset.images[:, 0], torch.tensor(images))
        assert dataset.labels.tolist() == labels.tolist()
    assert train_set.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the small splits start like the real
    assert test_set.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_test_items_are_unshifted_pixels(test_set):
    image, label = test_set[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 0 and isinstance(label, int)
    assert torch.equal(image, test_set.images[3].float() / 255)
    assert torch.equal(test_set[-1][0], test_set.images[-1].float() / 255)


def test_training_items_shift_by_at_most_two_pixels(train_set):
    shifts = set()
    for index in range(12):
        image, label = train_set[index]
        assert label == train_set.labels[index]
        matches = matching_shifts((image * 255).round().to(torch.uint8), train_set.images[index], 2)
        assert matches, f"item {index} is not a translation by at most 2 px with zero fill"
        shifts.update(matches)
    assert len(shifts) > 1


def test_batched_path_for_training_loops(train_set):
    images, labels = train_set.tensors()
    batch = images[:64]
    out = train_set.preprocess(batch, torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 28, 28) and out.dtype == torch.float32
    assert torch.equal(out, train_set.preprocess(batch, torch.Generator().manual_seed(0)))
    for shifted, image in zip((out[:8] * 255).round().to(torch.uint8), batch[:8], strict=False):
        assert matching_shifts(shifted, image, 2)
    assert labels[:64].tolist() == train_set.labels[:64].tolist()


def test_normalize_and_dataloader(small_mnist_root):
    normalized = MNIST(small_mnist_root / "mnist", train=False, download=False, normalize=True, verify=False)
    image, _ = normalized[0]
    torch.testing.assert_close(image, (normalized.images[0].float() / 255 - MNIST_MEAN) / MNIST_STD)
    images, labels = next(iter(DataLoader(normalized, batch_size=32, shuffle=True)))
    assert images.shape == (32, 1, 28, 28) and labels.shape == (32,) and labels.dtype == torch.int64


def test_root_falls_back_to_environment_then_cache(monkeypatch, tmp_path, small_mnist_root):
    monkeypatch.setenv("CAPSULES_DATA", str(small_mnist_root))
    dataset = MNIST(train=False, download=False, verify=False)
    assert dataset.root == small_mnist_root / "mnist"
    assert len(dataset) == len(read_idx(small_mnist_root / "mnist/t10k-labels-idx1-ubyte.gz"))
    monkeypatch.delenv("CAPSULES_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir(None, "mnist") == tmp_path / ".cache/capsule-routing/mnist"
    assert data_dir(tmp_path / "x", "mnist") == tmp_path / "x"


def _copy_test_split(source: Path, directory: Path, decompress_labels: bool = False) -> Path:
    """Copy the t10k files of `source` into `directory`; returns the labels file (decompressed if asked)."""
    directory.mkdir(exist_ok=True)
    shutil.copy(source / "t10k-images-idx3-ubyte.gz", directory)
    if not decompress_labels:
        return Path(shutil.copy(source / "t10k-labels-idx1-ubyte.gz", directory))
    labels = directory / "t10k-labels-idx1-ubyte"
    labels.write_bytes(gzip.decompress((source / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    return labels


def test_checksum_of_decompressed_content(tmp_path, real_mnist_dir):
    labels = _copy_test_split(real_mnist_dir, tmp_path, decompress_labels=True)
    assert MNIST(tmp_path, train=False, download=False).labels[:3].tolist() == [7, 2, 1]  # uncompressed file: same
    data = bytearray(labels.read_bytes())
    data[8] ^= 1  # the first label: 7 -> 6, still a valid file
    labels.write_bytes(bytes(data))
    with pytest.raises(DatasetFileError, match="checksum mismatch") as caught:
        MNIST(tmp_path, train=False, download=False)
    assert str(labels) in str(caught.value)
    assert MNIST(tmp_path, train=False, download=False, verify=False).labels[0] == 6


def test_corrupt_gzip(tmp_path, small_mnist_root):
    labels = _copy_test_split(small_mnist_root / "mnist", tmp_path)
    data = bytearray(labels.read_bytes())
    data[len(data) // 2] ^= 0xFF
    labels.write_bytes(bytes(data))
    with pytest.raises(DatasetFileError, match="gzip"):
        MNIST(tmp_path, train=False, download=False, verify=False)  # the gzip check comes first: no checksum needed


def test_missing_files_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        MNIST(tmp_path, train=True, download=False)
    message = str(caught.value)
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message and str(tmp_path) in message


def _write_small(directory: Path, images: np.ndarray, labels: np.ndarray) -> None:
    write_idx(directory / "train-images-idx3-ubyte", images)
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels, gzip=True)


IMAGES = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
LABELS = np.array([0, 3, 9, 1, 2], dtype=np.uint8)


def test_small_written_files_load_without_verification(tmp_path):
    _write_small(tmp_path, IMAGES, LABELS)
    dataset = MNIST(tmp_path, download=False, verify=False)
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(IMAGES)) and dataset.labels.tolist() == LABELS.tolist()
    with pytest.raises(DatasetFileError, match="checksum mismatch"):
        MNIST(tmp_path, download=False)


@pytest.mark.parametrize("images, labels, problem", [
    (IMAGES, LABELS[:4], "4 labels for 5 images"),
    (IMAGES, np.array([0, 3, 10, 1, 2], dtype=np.uint8), "label 10 outside 0..9"),
    (IMAGES[:, :27], LABELS, r"uint8 images \[N, 28, 28\], found uint8 \[5, 27, 28\]"),
    (IMAGES.astype(np.int16), LABELS, "found int16"),
    (IMAGES, LABELS.reshape(5, 1), r"labels \[N\]"),
])
def test_bad_files(tmp_path, images, labels, problem):
    _write_small(tmp_path, images, labels)
    with pytest.raises(DatasetFileError, match=problem):
        MNIST(tmp_path, download=False, verify=False)


@pytest.mark.parametrize("damage, problem", [
    (lambda data: b"\x00\x00\x0a\x03" + data[4:], "wrong IDX magic"),
    (lambda data: data[:-100], "truncated"),
])
def test_bad_idx_files(tmp_path, damage, problem):
    _write_small(tmp_path, IMAGES, LABELS)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetFileError, match=problem) as caught:
        MNIST(tmp_path, download=False, verify=False)
    assert str(path) in str(caught.value)
