"""Dataset loaders that read the real files, verify them and apply each paper's preprocessing.

`MNIST` (Sabour et al. 2017), `FashionMNIST`, `CIFAR10`, `SVHN`, `SmallNORB` (Hinton et al. 2018) and the official
`AffNIST` files are torch Datasets of (image, label) items; their `tensors()` and `preprocess()` give training loops
a batched path. `available_datasets()`, `dataset_info(name)` and `create_dataset(name, ...)` reach them by name, with
each one's image shape and classes. File formats live in `idx_format`, `norb_format`, `cifar_format` and
`mat_format`, downloads in `download`, batched transforms in `transforms`.
"""

from capsules.datasets.affnist import AffNIST
from capsules.datasets.cifar10 import CIFAR10
from capsules.datasets.errors import DatasetDownloadError, DatasetFileError
from capsules.datasets.fashion_mnist import FashionMNIST
from capsules.datasets.mnist import MNIST
from capsules.datasets.registry import (
    DatasetInfo,
    UnknownDatasetError,
    available_datasets,
    create_dataset,
    dataset_info,
)
from capsules.datasets.smallnorb import SmallNORB
from capsules.datasets.svhn import SVHN
from capsules.datasets.transforms import random_shift

__all__ = ["MNIST", "SmallNORB", "DatasetFileError", "DatasetDownloadError", "random_shift",
           "AffNIST", "CIFAR10", "FashionMNIST", "SVHN", "DatasetInfo", "UnknownDatasetError", "available_datasets",
           "create_dataset", "dataset_info"]
