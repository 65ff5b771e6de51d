"""Suite-wide set-up.

Triton kernels are checked on the CPU under Triton's interpreter. `triton.jit` decides at decoration time whether
a kernel is interpreted, so TRITON_INTERPRET must be set before any kernel module is imported: here, before the
test modules load. On a machine with CUDA the environment is left as it is (kernels compile for the GPU).

MNIST: most tests use small files that `small_mnist_root` writes in the real formats; tests about the real set take
it from `$CAPSULES_DATA/mnist` through `real_mnist_dir`, and skip, saying so, where it is absent.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ---- MNIST: small written files for most tests, the real files only where a test is about the real set ----

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REAL_MNIST_MISSING = ("real MNIST not found: set CAPSULES_DATA to a folder holding mnist/train-images-idx3-ubyte.gz, "
                      "mnist/train-labels-idx1-ubyte.gz, mnist/t10k-images-idx3-ubyte.gz and "
                      "mnist/t10k-labels-idx1-ubyte.gz (or the same names without .gz)")
SMALL_MNIST_SIZES = {True: 1024, False: 200}  # train, test
# The first labels of the real splits: the small splits start with them too, so tests may name them either way.
MNIST_FIRST_LABELS = {True: [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], False: [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]}


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """`$CAPSULES_DATA/mnist` when it holds the four real MNIST files; skips the test otherwise.

    For tests about the real set only (its sizes, pixel statistics, published checksums, learning on it); the
    loader checks the published MD5s, so other files in that folder fail those tests rather than pass them.
    """
    root = os.environ.get("CAPSULES_DATA")
    if not root:
        pytest.skip(f"{REAL_MNIST_MISSING}; CAPSULES_DATA is not set")
    directory = Path(root).expanduser().resolve() / "mnist"
    missing = [name for name in MNIST_FILES if not any((directory / (name + gz)).is_file() for gz in ("", ".gz"))]
    if missing:
        pytest.skip(f"{REAL_MNIST_MISSING}; {directory} lacks {', '.join(missing)}")
    return directory


def _small_mnist_split(train: bool, templates: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and labels [N]: bright noise where the label's template (bool [28, 28]) is set,
    dark noise elsewhere. Labels are balanced, in random order after the real split's first ten."""
    count = SMALL_MNIST_SIZES[train]
    labels = np.concatenate([MNIST_FIRST_LABELS[train], rng.permutation(np.arange(count - 10) % 10)]).astype(np.uint8)
    dark = rng.integers(0, 64, size=(count, 28, 28))
    bright = rng.integers(160, 256, size=(count, 28, 28))
    return np.where(templates[labels], bright, dark).astype(np.uint8), labels


@pytest.fixture(scope="session")
def small_mnist_root(tmp_path_factory) -> Path:
    """A data root whose mnist/ holds small MNIST splits (1024 training, 200 test images) in the real formats.

    The four files have the real names and are gzip-compressed IDX files like the published ones. Each class is its
    own random pattern of bright 4 x 4 blocks on a 7 x 7 grid, every pixel noisy: the narrow compact model tells the
    classes apart after one epoch of the 1024 images. The first ten labels of each split are those of the real split
    (MNIST_FIRST_LABELS). They are not the published files: load them with `verify=False`, or through
    `small_mnist`, which makes the loader check them against their own checksums.
    """
    from capsules.datasets.idx_format import write_idx

    root = tmp_path_factory.mktemp("small-data")
    directory = root / "mnist"
    directory.mkdir()
    rng = np.random.default_rng(0)
    templates = (rng.random((10, 7, 7)) < 0.5).repeat(4, axis=1).repeat(4, axis=2)  # bool [10, 28, 28]
    for train, prefix in ((True, "train"), (False, "t10k")):
        images, labels = _small_mnist_split(train, templates, rng)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, gzip=True)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, gzip=True)
    return root


@pytest.fixture(scope="session")
def small_mnist_md5(small_mnist_root) -> dict[str, str]:
    """The MD5 of each small file's decompressed content, keyed like `capsules.datasets.mnist.MNIST_MD5`."""
    from capsules.datasets.files import md5_hex, read_bytes

    directory = small_mnist_root / "mnist"
    return {name: md5_hex(read_bytes(directory / (name + ".gz"))) for name in MNIST_FILES}


@pytest.fixture
def small_mnist(small_mnist_root, small_mnist_md5) -> Iterator[Path]:
    """The folder of the small MNIST files, which the loader checks against their own MD5s during the test.

    For code that loads MNIST with verification always on (training, downloads): the published checksums are
    replaced, for this test only, by the small files' (`small_mnist_md5`), so a changed byte still fails. (Its own
    MonkeyPatch: a test's `monkeypatch.undo()` leaves it in place.)
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("capsules.datasets.mnist.MNIST_MD5", small_mnist_md5)
        yield small_mnist_root / "mnist"
