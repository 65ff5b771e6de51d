"""Small files written in the real formats of Fashion-MNIST, CIFAR-10, SVHN and affNIST, for the loaders' tests.

Each writer returns what it wrote; tests give the loader these files' own checksums (published ones would fail).
"""

from __future__ import annotations

import io
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capsules.datasets.cifar_format import write_batch
from capsules.datasets.files import md5_hex

CIFAR_TRAIN_BATCH = 8  # images per small training batch (the real ones hold 10,000)
CIFAR_TEST_IMAGES = 10


@dataclass
class SmallCifar:
    """images uint8 [N, 3, 32, 32] and labels [N] per split (True: the five training batches in order), the MD5 of
    each batch file and of the archive (None when only the folder was written), and the archive's path."""

    images: dict[bool, np.ndarray]
    labels: dict[bool, np.ndarray]
    md5: dict[str, str]
    archive_md5: str | None
    archive: Path | None


def python2_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as Python 2's cPickle wrote the real files: protocol 2, byte strings (BINSTRING), numpy
    arrays rebuilt by numpy.core.multiarray._reconstruct. images uint8 [N, 3072]."""

    def text(data: bytes) -> bytes:
        return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data

    def integer(value: int) -> bytes:
        if 0 <= value < 256:
            return b"K" + bytes([value])
        return b"M" + struct.pack("<H", value) if 0 <= value < 65536 else b"J" + struct.pack("<i", value)

    rows, columns = images.shape
    dtype = b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R"
    dtype += b"(" + integer(3) + text(b"|") + b"NNN" + integer(-1) * 2 + integer(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b") + b"\x87R"
    array += b"(" + integer(1) + integer(rows) + integer(columns) + b"\x86" + dtype + b"\x89"
    array += text(np.ascontiguousarray(images).tobytes()) + b"tb"
    label_list = b"](" + b"".join(integer(label) for label in labels) + b"e"
    return (b"\x80\x02}(" + text(b"batch_label") + text(b"training batch 1 of 5") + text(b"labels") + label_list
            + text(b"data") + array + b"u.")


def write_small_cifar(directory: Path, *, archive: bool = True, python2: bool = False, seed: int = 0) -> SmallCifar:
    """Write cifar-10-batches-py/ (five training batches of 8 images, a test batch of 10, batches.meta) into
    `directory`, packed as cifar-10-python.tar.gz (and the folder removed) when `archive`."""
    rng = np.random.default_rng(seed)
    images = {True: rng.integers(0, 256, (5 * CIFAR_TRAIN_BATCH, 3, 32, 32), dtype=np.uint8),
              False: rng.integers(0, 256, (CIFAR_TEST_IMAGES, 3, 32, 32), dtype=np.uint8)}
    labels = {train: np.arange(len(images[train])) % 10 for train in (True, False)}
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    parts = [slice(k * CIFAR_TRAIN_BATCH, (k + 1) * CIFAR_TRAIN_BATCH) for k in range(5)] + [slice(None)]
    for name, part in zip(names, parts, strict=True):
        split = name != "test_batch"
        if python2:
            flat = images[split][part].reshape(-1, 3072)
            (folder / name).write_bytes(python2_batch(flat, labels[split][part].tolist()))
        else:
            write_batch(folder / name, images[split][part], labels[split][part], name)
    (folder / "batches.meta").write_bytes(b"\x80\x02}.")
    md5 = {name: md5_hex((folder / name).read_bytes()) for name in names}
    if not archive:
        return SmallCifar(images, labels, md5, None, None)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    path = directory / "cifar-10-python.tar.gz"
    path.write_bytes(buffer.getvalue())
    return SmallCifar(images, labels, md5, md5_hex(buffer.getvalue()), path)


@dataclass
class SmallSvhn:
    """What was written: images uint8 [N, 3, 32, 32], digits [N] (0..9), the file and its MD5."""

    images: np.ndarray
    digits: np.ndarray
    path: Path
    md5: str


def write_small_svhn(directory: Path, train: bool = True, count: int = 12, seed: int = 0,
                     label_dtype: str = "uint8") -> SmallSvhn:
    """Write train_32x32.mat or test_32x32.mat as the real ones are laid out: X uint8 [32, 32, 3, N] and y [N, 1]
    with the digit 0 stored as 10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    digits = np.arange(count) % 10
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ("train_32x32.mat" if train else "test_32x32.mat")
    stored = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(label_dtype)
    savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": stored})
    return SmallSvhn(images, digits, path, md5_hex(path.read_bytes()))
