"""Dataset loaders that read the real files, verify them and apply each paper's preprocessing.

`MNIST` (Sabour et al. 2017) and `SmallNORB` (Hinton et al. 2018) are torch Datasets of (image, label) items; their
`tensors()` and `preprocess()` give training loops a batched path. File formats live in `idx_format` and
`norb_format`, downloads in `download`, batched transforms in `transforms`.
"""

from capsules.datasets.errors import DatasetDownloadError, DatasetFileError
from capsules.datasets.mnist import MNIST
from capsules.datasets.smallnorb import SmallNORB
from capsules.datasets.transforms import random_shift

__all__ = ["MNIST", "SmallNORB", "DatasetFileError", "DatasetDownloadError", "random_shift"]
