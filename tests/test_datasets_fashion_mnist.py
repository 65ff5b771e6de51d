"""Fashion-MNIST: MNIST's loader with its own files, checksums, mirrors and statistics (small files written in the
IDX format; the real files from $CAPSULES_DATA/fashion-mnist where present)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from capsules.datasets import DatasetFileError, FashionMNIST
from capsules.datasets import fashion_mnist as fashion_module
from capsules.datasets.files import md5_hex, read_bytes
from capsules.datasets.idx_format import write_idx

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
LABELS = np.array([9, 0, 0, 3, 0, 2], dtype=np.uint8)


@pytest.fixture
def small_fashion(tmp_path, monkeypatch) -> Path:
    """A folder with small t10k files, which the loader checks against their own MD5s."""
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", IMAGES, gzip=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", LABELS, gzip=True)
    md5s = {name: md5_hex(read_bytes(tmp_path / (name + ".gz")))
            for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_MD5", dict(fashion_module.FASHION_MNIST_MD5, **md5s))
    return tmp_path


def test_reads_its_files_with_its_checksums(small_fashion, monkeypatch):
    dataset = FashionMNIST(small_fashion, train=False, download=False)
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(IMAGES)) and dataset.labels.tolist() == LABELS.tolist()
    assert FashionMNIST.class_names[dataset.labels[0]] == "ankle boot"
    image, _ = FashionMNIST(small_fashion, train=False, download=False, normalize=True)[0]
    torch.testing.assert_close(image, (dataset.images[0].float() / 255 - 0.2860) / 0.3530)
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_MD5", {k: "0" * 32 for k in fashion_module.FASHION_MNIST_MD5})
    with pytest.raises(DatasetFileError, match="checksum mismatch"):
        FashionMNIST(small_fashion, train=False, download=False)


def test_default_folder_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSULES_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as caught:
        FashionMNIST(train=False, download=False)
    message = str(caught.value)
    assert "Fashion-MNIST" in message and str(tmp_path / "fashion-mnist") in message
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


def test_download_from_a_file_url(tmp_path, small_fashion):
    dataset = FashionMNIST(tmp_path / "copy", train=False, mirrors=[small_fashion.as_uri() + "/"])
    assert dataset.labels.tolist() == LABELS.tolist()
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                                      "t10k-labels-idx1-ubyte.gz"]


def test_real_files_have_the_published_statistics():
    root = os.environ.get("CAPSULES_DATA")
    directory = Path(root or "/nonexistent") / "fashion-mnist"
    if not any((directory / f"train-images-idx3-ubyte{gz}").is_file() for gz in ("", ".gz")):
        pytest.skip(f"real Fashion-MNIST not found in {directory} (set CAPSULES_DATA to a folder with fashion-mnist/)")
    dataset = FashionMNIST(directory, train=True, download=False)
    pixels = dataset.images.float() / 255
    assert len(dataset) == 60000 and torch.bincount(dataset.labels).tolist() == [6000] * 10
    assert pixels.mean().item() == pytest.approx(fashion_module.FASHION_MNIST_MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(fashion_module.FASHION_MNIST_STD, abs=1e-4)
