"""SVHN loader on small .mat files written as the real ones are laid out (scipy.io.savemat)."""

import gzip

import numpy as np
import pytest
import torch
from helpers_datasets import write_small_svhn

from capsules.datasets import SVHN, DatasetFileError
from capsules.datasets import svhn as svhn_module


def _patch_md5(monkeypatch, *written):
    monkeypatch.setattr(svhn_module, "SVHN_MD5", dict(svhn_module.SVHN_MD5, **{w.path.name: w.md5 for w in written}))


@pytest.mark.parametrize("label_dtype", ["uint8", "float64"])
def test_decodes_images_and_maps_ten_to_zero(tmp_path, monkeypatch, label_dtype):
    train, test = write_small_svhn(tmp_path, True, label_dtype=label_dtype), write_small_svhn(tmp_path, False, 7, 1)
    _patch_md5(monkeypatch, train, test)
    for written, split in ((train, True), (test, False)):
        dataset = SVHN(tmp_path, train=split, download=False)
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (len(written.digits), 3, 32, 32)
        assert torch.equal(dataset.images, torch.from_numpy(written.images))
        assert dataset.labels.dtype == torch.int64 and dataset.labels.tolist() == written.digits.tolist()
    assert SVHN(tmp_path, train=True, download=False).labels[0] == 0  # stored as 10


def test_items_and_shift(tmp_path, monkeypatch):
    written = write_small_svhn(tmp_path, True)
    _patch_md5(monkeypatch, written)
    dataset = SVHN(tmp_path, train=True, download=False, max_shift=0)
    image, label = dataset[1]
    assert image.shape == (3, 32, 32) and label == 1 and torch.equal(image, dataset.images[1].float() / 255)
    shifted = SVHN(tmp_path, train=True, download=False)
    assert shifted.max_shift == 2
    out = shifted.preprocess(shifted.images, torch.Generator().manual_seed(0))
    assert out.shape == (12, 3, 32, 32) and not torch.equal(out, shifted.images.float() / 255)


def test_gzip_compressed_copy_and_checksum(tmp_path, monkeypatch):
    written = write_small_svhn(tmp_path, False)
    _patch_md5(monkeypatch, written)
    compressed = tmp_path / "test_32x32.mat.gz"
    compressed.write_bytes(gzip.compress(written.path.read_bytes()))
    written.path.unlink()
    assert len(SVHN(tmp_path, train=False, download=False)) == 12  # the MD5 is of the content, compressed or not
    monkeypatch.setattr(svhn_module, "SVHN_MD5", dict(svhn_module.SVHN_MD5, **{"test_32x32.mat": "0" * 32}))
    with pytest.raises(DatasetFileError, match="checksum mismatch"):
        SVHN(tmp_path, train=False, download=False)


def _write_mat(path, **variables):
    from scipy.io import savemat

    savemat(path, variables)


@pytest.mark.parametrize("variables, problem", [
    ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "no variable 'y'"),
    ({"X": np.zeros((32, 32, 2), np.uint8), "y": np.ones((2, 1), np.uint8)}, r"X uint8 \[32, 32, 3, N\]"),
    ({"X": np.zeros((32, 32, 3, 2), np.float32), "y": np.ones((2, 1), np.uint8)}, "found float32"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1), np.uint8)}, "3 labels for 2 images"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)}, "label 11 outside 1..10"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [0]], np.uint8)}, "label 0 outside 1..10"),
    ({"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.array([[1.5]])}, "whole numbers"),
])
def test_bad_files(tmp_path, variables, problem):
    _write_mat(tmp_path / "test_32x32.mat", **variables)
    with pytest.raises(DatasetFileError, match=problem) as caught:
        SVHN(tmp_path, train=False, download=False, verify=False)
    assert "test_32x32.mat" in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file, truncated", b"\x00" * 300])
def test_corrupt_or_foreign_bytes(tmp_path, content):
    (tmp_path / "test_32x32.mat").write_bytes(content)
    with pytest.raises(DatasetFileError, match="not a readable MATLAB .mat file"):
        SVHN(tmp_path, train=False, download=False, verify=False)


def test_truncated_file(tmp_path):
    written = write_small_svhn(tmp_path, False)
    written.path.write_bytes(written.path.read_bytes()[:5000])
    with pytest.raises(DatasetFileError, match="test_32x32.mat"):
        SVHN(tmp_path, train=False, download=False, verify=False)


def test_missing_file_and_download_from_a_file_url(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as caught:
        SVHN(tmp_path / "empty", train=False, download=False)
    assert "SVHN" in str(caught.value) and "test_32x32.mat" in str(caught.value)
    written = write_small_svhn(tmp_path / "mirror", False)
    _patch_md5(monkeypatch, written)
    dataset = SVHN(tmp_path / "data", train=False, mirrors=[(tmp_path / "mirror").as_uri() + "/"])
    assert dataset.labels.tolist() == written.digits.tolist()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["test_32x32.mat"]  # fetched as is, not as .gz
