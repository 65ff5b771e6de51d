"""The datasets by name, with what a training script needs to size a model for them before loading any file.

    from capsules.datasets import available_datasets, create_dataset, dataset_info
    available_datasets()                      # ['affnist', 'cifar10', 'fashion-mnist', 'mnist', 'smallnorb', 'svhn']
    info = dataset_info("cifar10")            # info.image_shape == (3, 32, 32), info.classes == 10
    test_set = create_dataset("cifar10", train=False, download=False)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capsules.datasets.affnist import AFFNIST_CANVAS, AFFNIST_PAGE, AffNIST
from capsules.datasets.cifar10 import CIFAR10, CIFAR10_ARCHIVE, CIFAR10_CLASSES, CIFAR10_MIRRORS
from capsules.datasets.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MIRRORS, FashionMNIST
from capsules.datasets.idx_digits import IDX_FILES
from capsules.datasets.in_memory import InMemoryImages
from capsules.datasets.mnist import MNIST, MNIST_CLASSES, MNIST_MIRRORS
from capsules.datasets.smallnorb import CLASSES as SMALLNORB_CLASSES
from capsules.datasets.smallnorb import CROP, SMALLNORB_MD5, SMALLNORB_URL, SmallNORB
from capsules.datasets.svhn import SVHN, SVHN_CLASSES, SVHN_FILES, SVHN_MIRRORS


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset without reading it.

    `image_shape` (C, H, W) is that of the preprocessed images the loader's items and `preprocess` give with its
    default options (smallNORB: the stereo pair as 2 channels; `view="left"` gives 1); `class_names[k]` names label
    k; `folder` is its subfolder of $CAPSULES_DATA; `files` the file names it reads; `source` where they come from.
    """

    name: str
    title: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    loader: Callable[..., InMemoryImages]
    folder: str
    files: tuple[str, ...]
    source: str

    @property
    def classes(self) -> int:
        """The number of classes (labels are 0..classes-1)."""
        return len(self.class_names)


_IDX_NAMES = IDX_FILES[True] + IDX_FILES[False]
_DATASETS = {info.name: info for info in (
    DatasetInfo("mnist", "MNIST", (1, 28, 28), MNIST_CLASSES, MNIST, "mnist", _IDX_NAMES, MNIST_MIRRORS[0]),
    DatasetInfo("fashion-mnist", "Fashion-MNIST", (1, 28, 28), FASHION_MNIST_CLASSES, FashionMNIST,
                "fashion-mnist", _IDX_NAMES, FASHION_MNIST_MIRRORS[0]),
    DatasetInfo("cifar10", "CIFAR-10", (3, 32, 32), CIFAR10_CLASSES, CIFAR10, "cifar10", (CIFAR10_ARCHIVE,),
                CIFAR10_MIRRORS[0]),
    DatasetInfo("svhn", "SVHN", (3, 32, 32), SVHN_CLASSES, SVHN, "svhn", tuple(SVHN_FILES.values()),
                SVHN_MIRRORS[0]),
    DatasetInfo("smallnorb", "smallNORB", (2, CROP, CROP), SMALLNORB_CLASSES, SmallNORB, "smallnorb",
                tuple(SMALLNORB_MD5), SMALLNORB_URL),
    DatasetInfo("affnist", "affNIST", (1, AFFNIST_CANVAS, AFFNIST_CANVAS), MNIST_CLASSES, AffNIST, "affnist",
                ("test.mat", "test_batches/1.mat .. 32.mat"), AFFNIST_PAGE),
)}


class UnknownDatasetError(KeyError):
    """A dataset name that is not registered (the message lists the registered ones)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def available_datasets() -> list[str]:
    """The dataset names `create_dataset` accepts."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The metadata of dataset `name` (see `DatasetInfo`)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {name!r} of type {type(name).__name__}")
    if name not in _DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return _DATASETS[name]


def create_dataset(name: str, root: str | os.PathLike[str] | None = None, train: bool = True,
                   **options: Any) -> InMemoryImages:
    """The loader of dataset `name` for one split: `loader(root, train=train, **options)`, e.g.
    ``create_dataset("svhn", train=False, download=False)``. Options are the loader's own (download, max_shift, ...);
    one it does not take raises TypeError naming the dataset and the options it does take."""
    info = dataset_info(name)
    try:
        return info.loader(root, train=train, **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        import inspect

        accepted = [p for p in inspect.signature(info.loader).parameters if p not in ("self", "root", "train")]
        raise TypeError(f"{name}: {error}; its options are {', '.join(accepted)}") from None
