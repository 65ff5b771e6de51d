"""Training data as in-memory tensors, batched with a seeded generator and split across DDP ranks.

Every dataset fits in memory as uint8 (MNIST 47 MB, smallNORB 112 MB, CIFAR-10 184 MB, SVHN 300 MB), so an epoch
is a permutation of indices drawn from one `torch.Generator` and each batch is preprocessed at once with the
dataset's batched transforms (shift, flip, or crop, brightness and contrast): no per-item DataLoader, which costs
more than the model on a 2-core CPU.

Sharding for DistributedDataParallel: every rank draws the same permutation and the same augmentation for the whole
global batch, then keeps its contiguous slice of it. With a loss that is a mean over the batch, DDP's averaging of
the ranks' gradients then equals one process's gradient on the global batch (up to float summation order).
The last incomplete global batch of an epoch is dropped (a fresh permutation every epoch covers it later).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from capsules.datasets import CIFAR10, MNIST, SVHN, AffNIST, FashionMNIST, SmallNORB, dataset_info
from capsules.datasets.affine import place_on_canvas
from capsules.datasets.affnist import AFFNIST_CANVAS
from capsules.datasets.in_memory import InMemoryImages

# --dataset -> (training viewpoints, test viewpoints) of SmallNORB; Hinton et al. 2018's novel-viewpoint protocol.
SMALLNORB_SPLITS = {
    "smallnorb": (None, None),
    "smallnorb-azimuth": ("azimuth-familiar", "azimuth-novel"),
    "smallnorb-elevation": ("elevation-familiar", "elevation-novel"),
}
# Datasets read as their own training and test split, with the training shift of --max-shift where they take one.
_SPLIT_LOADERS = {"mnist": MNIST, "fashion-mnist": FashionMNIST, "svhn": SVHN, "cifar10": CIFAR10}
TRAIN_DATASETS = (*_SPLIT_LOADERS, "affnist", *SMALLNORB_SPLITS)
CANVAS_TEST_SEED = 0  # the fixed positions of the translated test set


@dataclass
class TrainingData:
    """train_images uint8 [N, C, H, W], train_labels int64 [N]; test_images float32 [M, C, h, w] (already
    preprocessed and placed: tests have no random augmentation), test_labels int64 [M]; `augment(uint8 batch,
    generator)` -> float32 batch as the model sees it; `classes` and `channels` size the model; `image_size` is h
    (= w)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    classes: int
    channels: int
    image_size: int


def load_data(dataset: str, root: str | os.PathLike[str] | None = None, *, train_subset: int | None = None,
              test_subset: int | None = None, max_shift: int | None = 2, smallnorb_view: str | None = None,
              canvas: int | None = None) -> TrainingData:
    """Load `dataset` (one of TRAIN_DATASETS) without downloading.

    "mnist", "fashion-mnist", "cifar10", "svhn": the dataset's training and test split. `max_shift` is the training
    shift in pixels (None: the dataset's own default; CIFAR-10 keeps its own, a crop with padding 4 and a horizontal
    flip, unless max_shift is 0). "smallnorb*": see SMALLNORB_SPLITS. "affnist": Sabour et al.'s protocol with the
    official affNIST files: training on the MNIST training digits placed at random on the 40x40 canvas (MNIST from
    $CAPSULES_DATA/mnist), testing on the first affNIST test batch (`root`, default $CAPSULES_DATA/affnist:
    test_batches/1.mat, 10,000 images: each MNIST test digit under one random affine map).

    With `canvas`, every training image is placed at a random position on a black canvas x canvas square (no
    other shift) and every test image at a fixed random position (generator seeded with CANVAS_TEST_SEED): the
    translated training and test sets of Sabour et al.'s affNIST protocol.

    Raises FileNotFoundError naming the folder and the files expected when the data is missing (download it with
    the dataset classes in capsules.datasets, or point `root`/$CAPSULES_DATA at a copy).
    """
    if dataset not in TRAIN_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(TRAIN_DATASETS)}")
    if dataset == "affnist":
        if canvas not in (None, AFFNIST_CANVAS):
            raise ValueError(f"affnist trains on MNIST digits on the {AFFNIST_CANVAS}x{AFFNIST_CANVAS} canvas of its "
                             f"test images; canvas={canvas} does not fit it")
        canvas = AFFNIST_CANVAS
    if canvas is not None:
        max_shift = 0
    try:
        train, test = _splits(dataset, root, max_shift, smallnorb_view)
    except FileNotFoundError as error:
        where = root if root is not None else f"$CAPSULES_DATA/{dataset_info(_registry_name(dataset)).folder}"
        raise FileNotFoundError(f"{dataset} data not found in {where}: {error}. Point --data-root (or "
                                f"$CAPSULES_DATA) at a folder holding the files, or download them with "
                                f"capsules.datasets") from error
    classes = dataset_info(_registry_name(dataset)).classes
    train_images, train_labels = _first(train.tensors(), train_subset)
    test_images, test_labels = _first(test.tensors(), test_subset)
    augment = train.preprocess
    if canvas is not None:
        if dataset != "affnist":  # affNIST's test images are on their canvas already
            test_images = place_on_canvas(test_images, canvas, torch.Generator().manual_seed(CANVAS_TEST_SEED))
        augment = on_canvas(train.preprocess, canvas)
    test_float = torch.cat([test.preprocess(chunk) for chunk in test_images.split(2000)])
    return TrainingData(train_images, train_labels, test_float, test_labels, augment, classes,
                        train_images.shape[1], test_float.shape[-1])


def on_canvas(preprocess: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
              canvas: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The augmentation that places each uint8 image at random on the canvas, then applies `preprocess`."""

    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return preprocess(place_on_canvas(images, canvas, generator), generator)

    return augment


def _registry_name(dataset: str) -> str:
    """The capsules.datasets name behind a --dataset value (the smallNORB splits are all "smallnorb")."""
    return "smallnorb" if dataset in SMALLNORB_SPLITS else dataset


def _splits(dataset: str, root: str | os.PathLike[str] | None, max_shift: int | None,
            smallnorb_view: str | None) -> tuple[InMemoryImages, InMemoryImages]:
    """The training and test loaders of a --dataset value (files must be present: nothing is downloaded)."""
    if dataset in SMALLNORB_SPLITS:
        train_views, test_views = SMALLNORB_SPLITS[dataset]
        return (SmallNORB(root, train=True, download=False, viewpoints=train_views, view=smallnorb_view),
                SmallNORB(root, train=False, download=False, viewpoints=test_views, view=smallnorb_view))
    if dataset == "affnist":
        return MNIST(None, train=True, download=False, max_shift=0), AffNIST(root, train=False, batches=(1,))
    loader = _SPLIT_LOADERS[dataset]
    # CIFAR-10 keeps its own crop (padding 4) unless shifts are off (--canvas): --max-shift's default is MNIST's.
    keep_own = max_shift is None or (loader is CIFAR10 and max_shift != 0)
    shift = {} if keep_own else {"max_shift": max_shift}
    return loader(root, train=True, download=False, **shift), loader(root, train=False, download=False)


def _first(tensors: tuple[torch.Tensor, torch.Tensor], count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = tensors
    return (images, labels) if count is None else (images[:count], labels[:count])


def steps_per_epoch(samples: int, batch_size: int) -> int:
    """Full global batches in one epoch (the incomplete last one is dropped)."""
    return samples // batch_size


def train_batches(data: TrainingData, batch_size: int, generator: torch.Generator, rank: int = 0,
                  world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (float images [batch_size / world_size, C, h, w], labels) for `rank`.

    Draws the permutation and every batch's augmentation from `generator` (the same on every rank), so the
    generator's state after the epoch is the same whatever the number of ranks. batch_size must divide by
    world_size.
    """
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} must be a multiple of the number of processes {world_size}")
    count = steps_per_epoch(len(data.train_labels), batch_size)
    if count == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {len(data.train_labels)} training images")
    order = torch.randperm(len(data.train_labels), generator=generator)
    local = batch_size // world_size
    for step in range(count):
        index = order[step * batch_size:(step + 1) * batch_size]
        images = data.augment(data.train_images[index], generator)
        mine = slice(rank * local, (rank + 1) * local)
        yield images[mine], data.train_labels[index][mine]


def eval_shard(data: TrainingData, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the test set (a strided split: every sample in exactly one rank's share)."""
    return data.test_images[rank::world_size], data.test_labels[rank::world_size]
