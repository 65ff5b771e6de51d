"""Datasets by name, their metadata, and the checks of every loader's options (issue 16: one clear error each)."""

import math
import os

import numpy as np
import pytest
import torch
from helpers_datasets import write_small_cifar, write_small_svhn
from helpers_smallnorb import write_split

from capsules.datasets import (
    CIFAR10,
    MNIST,
    SVHN,
    AffNIST,
    DatasetDownloadError,
    FashionMNIST,
    SmallNORB,
    UnknownDatasetError,
    available_datasets,
    create_dataset,
    dataset_info,
)
from capsules.datasets import download as download_module
from capsules.datasets.affnist import write_affnist_file

LOADERS = [MNIST, FashionMNIST, CIFAR10, SVHN, SmallNORB, AffNIST]
SHIFTED = [MNIST, FashionMNIST, CIFAR10, SVHN]


def test_available_datasets_and_their_metadata():
    assert available_datasets() == ["affnist", "cifar10", "fashion-mnist", "mnist", "smallnorb", "svhn"]
    shapes = {name: dataset_info(name).image_shape for name in available_datasets()}
    assert shapes == {"affnist": (1, 40, 40), "cifar10": (3, 32, 32), "fashion-mnist": (1, 28, 28),
                      "mnist": (1, 28, 28), "smallnorb": (2, 32, 32), "svhn": (3, 32, 32)}
    assert {name: dataset_info(name).classes for name in available_datasets()} == {
        "affnist": 10, "cifar10": 10, "fashion-mnist": 10, "mnist": 10, "smallnorb": 5, "svhn": 10}
    assert dataset_info("cifar10").class_names[0] == "airplane" and dataset_info("smallnorb").class_names[4] == "car"
    assert [dataset_info(name).loader for name in ("mnist", "affnist")] == [MNIST, AffNIST]
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'cifar100'; available: affnist, cifar10"):
        dataset_info("cifar100")
    with pytest.raises(TypeError, match="dataset name must be a str"):
        dataset_info(None)


def test_created_items_have_the_advertised_shape(tmp_path, monkeypatch, small_mnist):
    import capsules.datasets.cifar10 as cifar10_module
    import capsules.datasets.svhn as svhn_module

    cifar = write_small_cifar(tmp_path / "cifar10")
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", cifar.md5)
    svhn = write_small_svhn(tmp_path / "svhn", False)
    monkeypatch.setattr(svhn_module, "SVHN_MD5", {"test_32x32.mat": svhn.md5})
    write_split(tmp_path / "smallnorb", train=False, pairs=4)
    (tmp_path / "affnist").mkdir()
    write_affnist_file(tmp_path / "affnist" / "test.mat", np.zeros((2, 40, 40), np.uint8), np.array([3, 4]))
    roots = {"mnist": small_mnist, "fashion-mnist": small_mnist}
    for name in available_datasets():
        options = {"verify": False} if name == "fashion-mnist" else {}
        dataset = create_dataset(name, roots.get(name, tmp_path / name), train=False, download=False, **options)
        image, label = dataset[0]
        assert tuple(image.shape) == dataset_info(name).image_shape, name
        assert 0 <= label < dataset_info(name).classes
        batch = dataset.preprocess(dataset.tensors()[0][:2])
        assert tuple(batch.shape[1:]) == dataset_info(name).image_shape and batch.dtype == torch.float32


def test_create_dataset_names_the_options_a_loader_takes(tmp_path):
    with pytest.raises(TypeError, match="svhn: .*'flip'.*its options are download, max_shift, normalize"):
        create_dataset("svhn", tmp_path, flip=True)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("option, value, error, message", [
    ("train", "yes", TypeError, "train must be a bool"),
    ("train", 1, TypeError, "train must be a bool"),
    ("download", "no", TypeError, "download must be a bool"),
    ("root", 3, TypeError, "root must be a folder path"),
])
def test_options_every_loader_checks(tmp_path, loader, option, value, error, message):
    options = {"root": tmp_path, "download": False, option: value}
    with pytest.raises(error, match=message):
        loader(**options)


@pytest.mark.parametrize("loader", SHIFTED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("option, value, error, message", [
    ("max_shift", 2.5, TypeError, "max_shift must be an int, got 2.5"),
    ("max_shift", True, TypeError, "max_shift must be an int"),
    ("max_shift", -1, ValueError, r"max_shift must be in 0..(27|31) .*, got -1"),
    ("max_shift", 100, ValueError, "max_shift must be in 0..(27|31) .*blank"),
    ("normalize", "yes", TypeError, "normalize must be a bool"),
    ("verify", None, TypeError, "verify must be a bool"),
    ("mirrors", "https://example.test/", TypeError, "mirrors must be a list or tuple"),
    ("mirrors", [], ValueError, "mirrors must be a non-empty list"),
    ("mirrors", ["https://example.test"], ValueError, "ending in '/'"),
    ("timeout", 0, ValueError, "timeout must be a finite number of seconds > 0"),
    ("timeout", math.nan, ValueError, "timeout must be a finite number"),
    ("timeout", "30", TypeError, "timeout must be a number of seconds"),
])
def test_options_of_the_loaders_that_shift(tmp_path, loader, option, value, error, message):
    with pytest.raises(error, match=message):
        loader(tmp_path, download=False, **{option: value})


@pytest.mark.parametrize("option, value, error", [("augment", "no", TypeError), ("timeout", -1, ValueError),
                                                  ("mirrors", "x/", TypeError)])
def test_smallnorb_options(tmp_path, option, value, error):
    with pytest.raises(error, match=option):
        SmallNORB(tmp_path, download=False, **{option: value})


def test_cifar_flip_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match="flip must be a bool"):
        CIFAR10(tmp_path, download=False, flip="yes")


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
def test_root_that_is_a_file(tmp_path, loader):
    path = tmp_path / "data.txt"
    path.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file, expected the folder") as caught:
        loader(path, download=False)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("loader", [MNIST, FashionMNIST, CIFAR10, SVHN, SmallNORB], ids=lambda c: c.__name__)
def test_read_only_folder_with_download_names_the_folder(tmp_path, monkeypatch, loader):
    monkeypatch.setattr(download_module, "urlopen", _no_network)
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anyway: make the write probe fail as it would for anyone else
            monkeypatch.setattr(download_module.tempfile, "mkstemp", _permission_denied)
        with pytest.raises(PermissionError) as caught:
            loader(folder, download=True)
    finally:
        folder.chmod(0o755)
    message = str(caught.value)
    assert str(folder) in message and "not writable" in message and "No network?" not in message


def test_no_network_still_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "urlopen", _no_network)
    with pytest.raises(DatasetDownloadError, match="No network?"):
        SVHN(tmp_path, train=False)


def _no_network(url, timeout):
    raise OSError("no network")


def _permission_denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
