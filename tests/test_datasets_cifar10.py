"""CIFAR-10 loader on small batches written in the real format (pickles in cifar-10-python.tar.gz or extracted)."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from helpers_datasets import write_small_cifar

from capsules.datasets import CIFAR10, DatasetFileError
from capsules.datasets import cifar10 as cifar10_module
from capsules.datasets.cifar_format import parse_batch


@pytest.fixture
def small_cifar(tmp_path, monkeypatch):
    """A folder holding a small cifar-10-python.tar.gz, whose own checksums the loader checks."""
    written = write_small_cifar(tmp_path / "cifar10")
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", written.md5)
    monkeypatch.setattr(cifar10_module, "CIFAR10_ARCHIVE_MD5", written.archive_md5)
    return written


def test_archive_decodes_to_the_written_images(small_cifar):
    root = small_cifar.archive.parent
    for train in (True, False):
        dataset = CIFAR10(root, train=train, download=False)
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (len(small_cifar.labels[train]), 3, 32,
                                                                                 32)
        assert torch.equal(dataset.images, torch.from_numpy(small_cifar.images[train]))
        assert dataset.labels.dtype == torch.int64 and dataset.labels.tolist() == small_cifar.labels[train].tolist()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # read in place, nothing extracted


def test_python2_pickles_in_the_extracted_folder(tmp_path, monkeypatch):
    written = write_small_cifar(tmp_path, archive=False, python2=True)
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", written.md5)
    dataset = CIFAR10(tmp_path, train=True, download=False)
    assert torch.equal(dataset.images, torch.from_numpy(written.images[True]))
    assert dataset.labels.tolist() == written.labels[True].tolist()


def test_test_items_are_plain_pixels_and_training_items_shift_and_flip(small_cifar):
    root = small_cifar.archive.parent
    test_set = CIFAR10(root, train=False, download=False)
    image, label = test_set[3]
    assert image.shape == (3, 32, 32) and label == 3 and torch.equal(image, test_set.images[3].float() / 255)
    train_set = CIFAR10(root, train=True, download=False)
    assert train_set.max_shift == 4 and train_set.flip
    batch = train_set.images[:16]
    out = train_set.preprocess(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, train_set.preprocess(batch, torch.Generator().manual_seed(0)))
    pixels = (out * 255).round().to(torch.uint8)
    flipped = 0
    for shifted, original in zip(pixels, batch, strict=True):
        matches = [(dy, dx, flip) for flip in (False, True) for dy in range(-4, 5) for dx in range(-4, 5)
                   if torch.equal(shifted, _shift(original.flip(-1) if flip else original, dy, dx))]
        assert matches, "a training item is not the image shifted by at most 4 px, mirrored or not"
        flipped += all(flip for _, _, flip in matches)
    assert 0 < flipped < 16


def _shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        image[:, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out


def test_normalize_uses_per_channel_statistics(small_cifar):
    dataset = CIFAR10(small_cifar.archive.parent, train=False, download=False, normalize=True)
    mean = torch.tensor(cifar10_module.CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(cifar10_module.CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(dataset[0][0], (dataset.images[0].float() / 255 - mean) / std)


def test_checksum_mismatch_names_the_batch(tmp_path, monkeypatch):
    written = write_small_cifar(tmp_path, archive=False)
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", dict(written.md5, test_batch="0" * 32))
    with pytest.raises(DatasetFileError, match="checksum mismatch") as caught:
        CIFAR10(tmp_path, train=False, download=False)
    assert "test_batch" in str(caught.value)
    assert len(CIFAR10(tmp_path, train=False, download=False, verify=False)) == 10


@pytest.mark.parametrize("content, problem", [
    (pickle.dumps(os.system, protocol=2), "refusing to load"),  # would run code if unpickled blindly
    (b"\x80\x02}q\x00(X\x04\x00\x00\x00da", "cannot unpickle"),  # truncated
    (b"not a pickle at all", "cannot unpickle"),
    (pickle.dumps([1, 2, 3], protocol=2), "expected a pickled dict, found list"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2), "no 'labels' entry"),
    (pickle.dumps({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, protocol=2), r"uint8 \[N, 3072\]"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, protocol=2), "found float32"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, protocol=2), "1 labels for 2 images"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, protocol=2), "label 10 outside 0..9"),
    (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": ["cat"]}, protocol=2), "list of ints"),
])
def test_foreign_or_corrupt_pickles_raise_dataset_file_errors(content, problem):
    with pytest.raises(DatasetFileError, match=problem) as caught:
        parse_batch(content, "some/test_batch")
    assert "some/test_batch" in str(caught.value)


def test_corrupt_archive_and_foreign_archive(tmp_path, monkeypatch):
    written = write_small_cifar(tmp_path)
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", written.md5)
    data = bytearray(written.archive.read_bytes())
    written.archive.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DatasetFileError, match="corrupt or truncated archive") as caught:
        CIFAR10(tmp_path, train=False, download=False)
    assert "cifar-10-python.tar.gz" in str(caught.value)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("something-else/readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    written.archive.write_bytes(buffer.getvalue())
    with pytest.raises(DatasetFileError, match="has no file cifar-10-batches-py/test_batch"):
        CIFAR10(tmp_path, train=False, download=False)


def test_missing_files_name_the_archive_and_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        CIFAR10(tmp_path, train=True, download=False)
    message = str(caught.value)
    assert "CIFAR-10" in message and "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message
    assert str(tmp_path) in message


def test_download_from_a_file_url_checks_the_archive_md5(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    written = write_small_cifar(source)
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", written.md5)
    monkeypatch.setattr(cifar10_module, "CIFAR10_ARCHIVE_MD5", written.archive_md5)
    dataset = CIFAR10(tmp_path / "data", train=False, mirrors=[source.as_uri() + "/"])
    assert dataset.labels.tolist() == written.labels[False].tolist()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cifar-10-python.tar.gz"]
    monkeypatch.setattr(cifar10_module, "CIFAR10_ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DatasetFileError, match="checksum mismatch"):
        CIFAR10(tmp_path / "other", train=False, mirrors=[source.as_uri() + "/"])
    assert list((tmp_path / "other").iterdir()) == []
