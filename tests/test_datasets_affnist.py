"""The official affNIST .mat files: small files written in their layout (scipy.io.savemat), checked by structure."""

import gzip

import numpy as np
import pytest
import torch

from capsules.datasets import AffNIST, DatasetFileError
from capsules.datasets.affnist import write_affnist_file

RNG = np.random.default_rng(0)


def _images(count: int) -> np.ndarray:
    return RNG.integers(0, 256, (count, 40, 40), dtype=np.uint8)


def test_batches_in_order_and_row_major_pixels(tmp_path):
    (tmp_path / "test_batches").mkdir()
    first, second = _images(5), _images(3)
    first[0] = 0
    first[0, 2, 30] = 255  # row 2, column 30: stored at 2 * 40 + 30 of the 1600-pixel column
    write_affnist_file(tmp_path / "test_batches" / "1.mat", first, np.arange(5))
    write_affnist_file(tmp_path / "test_batches" / "2.mat", second, np.array([7, 8, 9]))
    from scipy.io import loadmat

    column = loadmat(tmp_path / "test_batches" / "1.mat")["affNISTdata"]["image"].item()[:, 0]
    assert column[2 * 40 + 30] == 255 and column.sum() == 255
    dataset = AffNIST(tmp_path, batches=[2, 1])
    assert dataset.images.shape == (8, 1, 40, 40) and dataset.images.dtype == torch.uint8
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(np.concatenate([second, first])))
    assert dataset.labels.tolist() == [7, 8, 9, 0, 1, 2, 3, 4]
    image, label = dataset[3]
    assert image.shape == (1, 40, 40) and label == 0 and image[0, 2, 30] == 1.0 and image.sum() == 1.0


def test_whole_test_file_first_then_all_batches(tmp_path):
    images = _images(4)
    write_affnist_file(tmp_path / "test.mat", images, np.array([1, 2, 3, 4]))
    (tmp_path / "test.mat.gz").write_bytes(gzip.compress((tmp_path / "test.mat").read_bytes()))
    (tmp_path / "test.mat").unlink()
    assert AffNIST(tmp_path).labels.tolist() == [1, 2, 3, 4]
    with pytest.raises(FileNotFoundError, match=r"training.mat .*training_batches/<k>.mat for k = 1, 2, 3"):
        AffNIST(tmp_path, train=True)


def test_missing_files_say_where_to_get_them_and_download_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        AffNIST(tmp_path, batches=[1, 3])
    message = str(caught.value)
    assert "affNIST" in message and "test_batches/<k>.mat for k = 1, 3" in message and str(tmp_path) in message
    assert "https://www.cs.toronto.edu/~tijmen/affNIST/" in message
    with pytest.raises(FileNotFoundError, match="not downloaded automatically"):
        AffNIST(tmp_path, download=True)


def _write(path, **fields):
    from scipy.io import savemat

    savemat(path, {"affNISTdata": fields} if fields else {"other": np.zeros(1)})


@pytest.mark.parametrize("fields, problem", [
    ({}, "no variable 'affNISTdata'"),
    ({"image": np.zeros((1600, 2), np.uint8)}, "fields image and label_int"),
    ({"image": np.zeros((784, 2), np.uint8), "label_int": np.zeros((1, 2), np.uint8)}, r"uint8 \[1600, N\]"),
    ({"image": np.zeros((1600, 2), np.float64), "label_int": np.zeros((1, 2), np.uint8)}, "found float64"),
    ({"image": np.zeros((1600, 2), np.uint8), "label_int": np.zeros((1, 3), np.uint8)}, "3 labels"),
    ({"image": np.zeros((1600, 2), np.uint8), "label_int": np.array([[0, 10]], np.uint8)}, "label_int 10 outside"),
])
def test_bad_files(tmp_path, fields, problem):
    _write(tmp_path / "test.mat", **fields)
    with pytest.raises(DatasetFileError, match=problem) as caught:
        AffNIST(tmp_path)
    assert "test.mat" in str(caught.value)


def test_corrupt_file(tmp_path):
    write_affnist_file(tmp_path / "test.mat", _images(50), np.zeros(50))
    (tmp_path / "test.mat").write_bytes((tmp_path / "test.mat").read_bytes()[:3000])
    with pytest.raises(DatasetFileError, match="test.mat"):
        AffNIST(tmp_path)


@pytest.mark.parametrize("batches", [[], [0], [33], [1.0], "1", [True]])
def test_bad_batch_numbers(tmp_path, batches):
    with pytest.raises(ValueError, match="batch numbers in 1..32"):
        AffNIST(tmp_path, batches=batches)
