"""capsule-train's data for every dataset: small files written in the real formats load with the right sizes, and a
tiny run trains on a written CIFAR-10 archive."""

import math

import numpy as np
import pytest
import torch
from helpers_datasets import write_small_cifar, write_small_svhn

import capsules.datasets.cifar10 as cifar10_module
import capsules.datasets.fashion_mnist as fashion_module
import capsules.datasets.svhn as svhn_module
from capsules.datasets.affnist import write_affnist_file
from experiments.train.config import DATASETS, build_config
from experiments.train.data import TRAIN_DATASETS, load_data
from experiments.train.run import train


@pytest.fixture
def written_roots(tmp_path, monkeypatch, small_mnist, small_mnist_md5):
    """Data roots by --dataset value, each holding small files in the real format whose checksums the loaders
    check; MNIST (also affnist's training set) through $CAPSULES_DATA."""
    monkeypatch.setenv("CAPSULES_DATA", str(small_mnist.parent))
    monkeypatch.setattr(fashion_module, "FASHION_MNIST_MD5", small_mnist_md5)
    cifar = write_small_cifar(tmp_path / "cifar10")
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", cifar.md5)
    svhn = [write_small_svhn(tmp_path / "svhn", train, count) for train, count in ((True, 20), (False, 6))]
    monkeypatch.setattr(svhn_module, "SVHN_MD5", {written.path.name: written.md5 for written in svhn})
    (tmp_path / "affnist" / "test_batches").mkdir(parents=True)
    write_affnist_file(tmp_path / "affnist" / "test_batches" / "1.mat", np.zeros((4, 40, 40), np.uint8),
                       np.array([1, 2, 3, 4]))
    return {"mnist": small_mnist, "fashion-mnist": small_mnist, "cifar10": tmp_path / "cifar10",
            "svhn": tmp_path / "svhn", "affnist": tmp_path / "affnist"}


def test_every_dataset_is_a_training_choice():
    assert set(TRAIN_DATASETS) == set(DATASETS)


@pytest.mark.parametrize("dataset, channels, size, test_count", [
    ("mnist", 1, 28, 200), ("fashion-mnist", 1, 28, 200), ("cifar10", 3, 32, 10), ("svhn", 3, 32, 6),
    ("affnist", 1, 40, 4),
])
def test_load_data_sizes_models_from_the_dataset(written_roots, dataset, channels, size, test_count):
    data = load_data(dataset, written_roots[dataset], train_subset=16)
    assert (data.channels, data.image_size, data.classes) == (channels, size, 10)
    assert data.test_images.shape == (test_count, channels, size, size) and data.test_images.dtype == torch.float32
    batch = data.augment(data.train_images[:4], torch.Generator().manual_seed(0))
    assert batch.shape == (4, channels, size, size) and batch.dtype == torch.float32
    assert data.train_labels.dtype == torch.int64 and data.train_labels.max() < 10


def test_affnist_places_mnist_training_digits_on_its_canvas(written_roots):
    data = load_data("affnist", written_roots["affnist"], train_subset=8)
    assert data.train_images.shape[-1] == 28  # stored as MNIST's digits, placed at random by the augmentation
    placed = data.augment(data.train_images, torch.Generator().manual_seed(1))
    assert placed.shape == (8, 1, 40, 40)
    assert torch.allclose(placed.sum(dim=(1, 2, 3)), data.train_images.float().sum(dim=(1, 2, 3)) / 255)
    with pytest.raises(ValueError, match="canvas=32 does not fit"):
        load_data("affnist", written_roots["affnist"], canvas=32)


def test_missing_dataset_names_its_folder(tmp_path):
    for dataset in ("cifar10", "svhn", "fashion-mnist", "affnist"):
        with pytest.raises(FileNotFoundError, match=f"{dataset} data not found in {tmp_path}"):
            load_data(dataset, tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'cifar100'; expected one of mnist, fashion-mnist"):
        load_data("cifar100", tmp_path)


def test_tiny_training_run_on_a_written_cifar10_archive(tmp_path, written_roots):
    config = build_config(model="compact", model_options={"channels": [8, 16, 16], "types": 2}, dataset="cifar10",
                          data_root=str(written_roots["cifar10"]), batch_size=8, epochs=1, schedule="constant",
                          lr=1e-3, progress=False, out_dir=str(tmp_path / "run"))
    table = train(config)
    assert len(table) == 1 and table["config_dataset"].iloc[0] == "cifar10"
    assert math.isfinite(table["train_loss"].iloc[0]) and 0 <= table["test_accuracy"].iloc[0] <= 1
