"""Training data as in-memory tensors, batched with a seeded generator and split across DDP ranks.

MNIST and smallNORB fit in memory as uint8 (47 MB and 112 MB), so an epoch is a permutation of indices drawn from
one `torch.Generator` and each batch is preprocessed at once with the dataset's batched transforms (shift, or crop,
brightness and contrast): no per-item DataLoader, which costs more than the model on a 2-core CPU.

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

from capsules.datasets import MNIST, SmallNORB
from capsules.datasets.affine import place_on_canvas

# --dataset -> (training viewpoints, test viewpoints) of SmallNORB; Hinton et al. 2018's novel-viewpoint protocol.
SMALLNORB_SPLITS = {
    "smallnorb": (None, None),
    "smallnorb-azimuth": ("azimuth-familiar", "azimuth-novel"),
    "smallnorb-elevation": ("elevation-familiar", "elevation-novel"),
}


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
              test_subset: int | None = None, max_shift: int = 2, smallnorb_view: str | None = None,
              canvas: int | None = None) -> TrainingData:
    """Load `dataset` ("mnist", "smallnorb", "smallnorb-azimuth", "smallnorb-elevation") without downloading.

    With `canvas`, every training image is placed at a random position on a black canvas x canvas square (no
    other shift) and every test image at a fixed random position (generator seeded with CANVAS_TEST_SEED): the
    translated training and test sets of Sabour et al.'s affNIST protocol.

    Raises FileNotFoundError naming the folder and the files expected when the data is missing (download it with
    the dataset classes in capsules.datasets, or point `root`/$CAPSULES_DATA at a copy).
    """
    if canvas is not None:
        max_shift = 0
    try:
        if dataset == "mnist":
            train = MNIST(root, train=True, download=False, max_shift=max_shift)
            test = MNIST(root, train=False, download=False)
            classes = 10
        elif dataset in SMALLNORB_SPLITS:
            train_views, test_views = SMALLNORB_SPLITS[dataset]
            train = SmallNORB(root, train=True, download=False, viewpoints=train_views, view=smallnorb_view)
            test = SmallNORB(root, train=False, download=False, viewpoints=test_views, view=smallnorb_view)
            classes = 5
        else:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of mnist, {', '.join(SMALLNORB_SPLITS)}")
    except FileNotFoundError as error:
        where = root if root is not None else f"$CAPSULES_DATA/{dataset.split('-')[0]}"
        raise FileNotFoundError(f"{dataset} data not found in {where}: {error}. Point --data-root (or "
                                f"$CAPSULES_DATA) at a folder holding the files, or download them with "
                                f"capsules.datasets") from error
    train_images, train_labels = _first(train.tensors(), train_subset)
    test_images, test_labels = _first(test.tensors(), test_subset)
    augment = train.preprocess
    if canvas is not None:
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
